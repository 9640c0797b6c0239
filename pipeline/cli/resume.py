"""`quotaflow run` again on the same batch and output: what is kept, what is sent.

An output file never replaces anything it should not: not the batch itself, not a file
that is no output of this batch (unless `--force`). An existing output of this batch is
an earlier run's: its results are kept and their requests not sent again; its failures
are tried again. The job id of a run is derived from the batch's content (and the
options that change where its requests go), so that on a configured Redis the same
`run` joins the same job and skips what that job already holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budget import QuotaflowError
from pipeline.batchfile import BatchLine, LineError, read_batch, rejected_id
from pipeline.cli.options import cmd


@dataclass
class Earlier:
    """What an earlier run of this batch left in the output file."""

    #: custom_id -> the output line (as written) of each request that has a result.
    results: dict[str, str] = field(default_factory=dict)
    #: Requests whose earlier output line is a failure: they are sent again.
    failed: int = 0


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _batch_ids(batch: Path) -> set[str]:
    """The custom_ids the batch's output lines can have (refused lines without one: `#line-N`)."""
    ids = set()
    for item in read_batch(batch):
        if isinstance(item, BatchLine):
            ids.add(item.custom_id)
        else:
            ids.add(item.custom_id or rejected_id(item.line))
    return ids


def earlier_output(batch: Path, output: Path, *, force: bool) -> Earlier:
    """The earlier run's results to keep; QuotaflowError if `output` must not be written."""
    if _same_file(batch, output):
        raise QuotaflowError(
            f"--output {output} is the batch file itself: the results would replace the "
            "requests; give the results another file name"
        )
    if force or not output.exists():
        return Earlier()
    not_ours = QuotaflowError(
        f"{output} exists and is not an output of {batch}; give another --output, or pass "
        "--force to replace it"
    )
    ids = _batch_ids(batch)
    earlier = Earlier()
    try:
        with output.open(encoding="utf-8") as fh:
            for text in fh:
                if not text.strip():
                    continue
                line = json.loads(text)
                cid = line.get("custom_id") if isinstance(line, dict) else None
                if cid not in ids:
                    raise not_ours
                if line.get("error") is None and line.get("response") is not None:
                    earlier.results[cid] = text.rstrip("\n")
                else:
                    earlier.failed += 1
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise not_ours from None
    return earlier


def lines_to_send(batch: Path, earlier: Earlier) -> Iterator[BatchLine | LineError]:
    """The batch's lines, less those with a result in the earlier output."""
    for item in read_batch(batch):
        if isinstance(item, BatchLine) and item.custom_id in earlier.results:
            continue
        yield item


def run_job_id(batch: Path, *, deployment: str | None, tenant: str | None) -> str:
    """The same id for the same batch content sent the same way."""
    digest = hashlib.sha256()
    with batch.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(json.dumps([deployment, tenant]).encode())
    return f"run-{digest.hexdigest()[:16]}"


def write_output(path: Path, earlier: Earlier, lines: Iterable[dict[str, Any]]) -> set[str]:
    """The earlier results, then this run's finished requests, written atomically.

    Returns the custom_ids written.
    """
    tmp = path.with_name(f".{path.name}.partial")
    seen: set[str] = set()
    with tmp.open("w", encoding="utf-8") as out:
        for cid, text in earlier.results.items():
            seen.add(cid)
            out.write(text + "\n")
        for line in lines:
            if line["custom_id"] in seen:
                continue
            seen.add(line["custom_id"])
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    return seen


def resume_command(
    batch: Path,
    output: Path,
    job_id: str | None,
    *,
    deployment: str | None = None,
    tenant: str | None = None,
) -> str:
    """The command that carries on from here: the same batch, output, deployment and
    tenant (they make the derived job id, and say where the requests go), and
    `job_id` when the job's id is not the derived one."""
    extra: list[str] = []
    for option, value in (("--deployment", deployment), ("--tenant", tenant),
                          ("--job-id", job_id)):  # fmt: skip
        if value:
            extra += [option, value]
    return cmd("run", batch, "-o", output, *extra)
