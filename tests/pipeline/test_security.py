"""Nothing leaked: the Redis password and the prompts stay out of Celery's and Flower's views.

One password-protected Redis, one real worker and one real Flower serve the tests
that look at what Celery and Flower show.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from support.cli import cli_env
from support.cluster import API_KEY, ROOT, Cluster, Worker, cluster_settings
from support.flower import Flower

from pipeline import app
from pipeline.app import configure
from pipeline.redis_server import RedisServer
from settings import Settings, settings_env
from simulator import Simulator, SimulatorConfig
from tasks import complete
from tasks.hidden import HIDDEN_RESULT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PASSWORD = "pw-7c1e9f2a-never-shown"
PROMPT = "prompt-3f8a61-stays-private"
BODY = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": PROMPT}]}


@dataclass
class Stack:
    settings: Settings
    worker: Worker
    flower: Flower
    env: dict[str, str]

    def worker_name(self) -> str:
        text = self.flower.poll("/api/workers?refresh=1", lambda t: self.worker.name in t)
        (name,) = [w for w in json.loads(text) if w.startswith(self.worker.name + "@")]
        return name


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = RedisServer(password=PASSWORD).start()
    sim = Simulator(SimulatorConfig(api_key=API_KEY, tpm=600_000, rpm=30_000)).start()
    c = Cluster(cluster_settings(server.url, sim))
    flower = None
    try:
        (worker,) = c.start_workers(1, concurrency=2)
        flower = Flower(c.settings, tmp_path_factory.mktemp("flower"))
        env = cli_env(**settings_env(c.settings))
        yield Stack(c.settings, worker, flower, env)
    finally:
        if flower is not None:
            flower.stop()
        c.stop()
        sim.stop()
        server.cleanup()


def celery(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "pipeline", *args],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_edge_redis_password_hidden_from_inspect_report_flower_and_logs(stack: Stack) -> None:
    configure(app, stack.settings)
    assert complete.delay(BODY, custom_id="pw-1").get(timeout=60)["choices"]

    name = stack.worker_name()
    # To the one worker: inspect returns on its reply instead of waiting out the timeout.
    conf = celery(stack, "inspect", "conf", "--timeout", "10", "--destination", name)
    assert "broker_url" in conf and "redis://:********@" in conf
    report = celery(stack, "report")
    assert "broker_url" in report
    workers = stack.flower.poll("/api/workers?refresh=1", lambda t: '"conf"' in t)
    status, page = stack.flower.get(f"/worker/{name}")
    assert status == 200 and "broker_url" in page

    for shown in (conf, report, workers, page, stack.worker.log(), stack.flower.log()):
        assert PASSWORD not in shown


def test_edge_prompt_hidden_from_flower_and_task_events(stack: Stack) -> None:
    configure(app, stack.settings)
    done = complete.delay(BODY, custom_id="cid-shown-1", job_id="job-shown", tenant="team-shown")
    done.get(timeout=60)
    # Held by the worker as an ETA task: what `inspect scheduled` (Flower's worker page) shows.
    complete.apply_async((BODY,), {"custom_id": "cid-held-2", "job_id": "job-shown"}, countdown=25)

    tasks = stack.flower.poll("/api/tasks", lambda t: "cid-shown-1" in t and "SUCCESS" in t)
    assert "team-shown" in tasks and "job-shown" in tasks and "gpt-4o-mini" in tasks
    status, task_page = stack.flower.get(f"/task/{done.id}")
    assert status == 200 and "cid-shown-1" in task_page
    name = stack.worker_name()
    held = stack.flower.poll(
        f"/api/workers?refresh=1&workername={name}", lambda t: "cid-held-2" in t
    )
    status, worker_page = stack.flower.get(f"/worker/{name}")
    assert status == 200 and "cid-held-2" in worker_page

    for shown in (tasks, task_page, held, worker_page):
        assert PROMPT not in shown


def test_edge_response_hidden_from_flower_task_events_and_log(stack: Stack) -> None:
    # N18: the response can carry as much personal data as the prompt. The caller
    # gets it; Flower, the task-succeeded event and the worker's log line do not.
    configure(app, stack.settings)
    stack.worker_name()  # Flower is up and listening before the task runs
    done = complete.delay(BODY, custom_id="cid-answer-1", job_id="job-answer")
    answer = done.get(timeout=60)
    reply = answer["id"]  # unique to this response
    assert reply.startswith("chatcmpl-") and answer["choices"][0]["message"]["content"]

    tasks = stack.flower.poll("/api/tasks", lambda t: "cid-answer-1" in t and "SUCCESS" in t)
    succeeded = stack.flower.poll(
        f"/api/task/info/{done.id}", lambda t: json.loads(t).get("state") == "SUCCESS"
    )
    info = json.loads(succeeded)
    assert info["result"] == HIDDEN_RESULT
    status, task_page = stack.flower.get(f"/task/{done.id}")
    assert status == 200 and "cid-answer-1" in task_page
    deadline = time.monotonic() + 10  # Celery logs the success just after storing it
    while f"[{done.id}] succeeded in" not in stack.worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = stack.worker.log()
    assert f"[{done.id}] succeeded in" in log and HIDDEN_RESULT in log
    for shown in (tasks, task_page, log):
        assert reply not in shown


@pytest.mark.parametrize("show", [False, True])
def test_edge_show_task_arguments_puts_the_prompt_back(
    redis_server: RedisServer, redis_client: redis.Redis, show: bool
) -> None:
    configure(app, Settings(redis_url=redis_server.url, show_task_arguments=show))
    complete.delay(BODY, custom_id="cid-3", tenant="team-3")
    (raw,) = redis_client.lrange("quotaflow.default", 0, -1)
    headers = json.loads(raw)["headers"]
    assert (PROMPT in headers["argsrepr"]) is show
    assert "cid-3" in headers["kwargsrepr"] and "team-3" in headers["kwargsrepr"]
    if not show:
        assert "gpt-4o-mini" in headers["kwargsrepr"]
