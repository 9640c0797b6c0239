"""Publishing from code (`.delay()`) to a Redis that does not answer: one clear line at
once, nothing sent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.cli import cli_env

from pipeline.redis_server import free_port

SCRIPT = """
import pipeline
from tasks import complete
complete.delay({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5})
"""


def test_edge_delay_to_an_unreachable_redis_says_so_in_one_line(tmp_path: Path) -> None:
    url = f"redis://:secret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, env=cli_env(QUOTAFLOW_REDIS_URL=url),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline.publish.RedisUnreachable: Redis at redis://:***@127.0.0.1")
    assert "does not answer" in last and "nothing was sent" in last
    assert "QUOTAFLOW_REDIS_URL" in last
    # Not Celery's reconnect loop and its chain of tracebacks; no password shown.
    assert "The above exception" not in done.stderr
    assert "Retry limit exceeded" not in done.stderr
    assert "secret-pw" not in done.stderr
