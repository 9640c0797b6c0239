"""What the summaries say: the pace against the quota, in the provider's tokens."""

from __future__ import annotations

import io

from rich.console import Console

from pipeline.views import job_table
from settings import DeploymentSettings
from tasks.jobstore import STATES, JobStatus

DEP = DeploymentSettings(
    name="local", kind="compatible", model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1",
    tpm=30_000, rpm=600,
)  # fmt: skip


def render(table: object) -> str:
    out = Console(width=200, record=True, file=io.StringIO())
    out.print(table)
    return " ".join(out.export_text().split())


def finished(**totals: int) -> JobStatus:
    counts = dict.fromkeys(STATES, 0)
    counts["done"] = 100
    return JobStatus(job_id="j", total=100, counts=counts, cost_usd=0.0, deferrals=13,
                     retries=0, created_at=0.0, **totals)  # fmt: skip


def test_edge_the_run_summary_tells_the_burst_from_the_pace() -> None:
    # The README's recipe: 100 requests, ~41,400 tokens charged (prompt + max_tokens),
    # ~25,500 used, in 45 s against 30,000 tokens/min with a 29,000-token burst.
    status = finished(tokens_estimated=41_400, prompt_tokens=600, completion_tokens=24_900)
    text = render(job_table(status, title="job j", elapsed=45.0, deployments=[DEP], charged=41_400))
    # Not "34,000 tokens/min on average" beside a 30,000 quota: the burst is apart.
    assert "tokens/min on average" not in text
    assert (
        "~41,400 tokens charged (prompt + max_tokens, as the provider counts): the first "
        "29,000 at once (the burst the quota allows), the other 12,400 at 16,533/min over "
        "the whole run (quota 30,000/min)"
    ) in text, text
    assert "600 prompt + 24,900 completion used (estimated at submit: 41,400)" in text


def test_edge_a_cost_of_zero_says_no_prices_are_set() -> None:
    status = finished(tokens_estimated=100, prompt_tokens=50, completion_tokens=10)
    text = render(job_table(status, title="job j", deployments=[DEP]))
    assert "$0.0000 (no prices set: give the deployment price_input_per_1m and" in text
    priced = DEP.model_copy(update={"price_input_per_1m": 0.15})
    assert "no prices set" not in render(job_table(status, title="j", deployments=[priced]))


def test_edge_a_run_after_another_paces_from_what_the_budget_had_free() -> None:
    # A second run starts on the budget the first left: 5,000 tokens free, not the
    # 29,000 burst. Told as a full burst, its pace would read at a third of the quota.
    status = finished(tokens_estimated=41_400, prompt_tokens=600, completion_tokens=24_900)
    text = render(
        job_table(status, title="job j", elapsed=75.0, deployments=[DEP], charged=41_400,
                  free_at_start=5_000.0)
    )  # fmt: skip
    assert (
        "the first 5,000 at once (what the budget had free at the start, of a 29,000 burst), "
        "the other 36,400 at 29,120/min over the whole run"
    ) in text, text


def test_edge_no_pace_for_requests_that_were_never_sent() -> None:
    # 150 of 200 requests cancelled before they were sent: their estimate was never
    # charged, and a pace counting it read 164,504/min against a 30,000 quota.
    counts = dict.fromkeys(STATES, 0)
    counts.update(done=50, failed=150)
    status = JobStatus(job_id="j", total=200, counts=counts, cost_usd=0.0, deferrals=0,
                       retries=0, created_at=0.0, tokens_estimated=82_800, prompt_tokens=300,
                       completion_tokens=12_792)  # fmt: skip
    text = render(job_table(status, title="job j", elapsed=19.6, deployments=[DEP]))
    assert "pace" not in text, text
