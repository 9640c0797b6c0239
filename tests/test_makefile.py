"""The Makefile's commands, as `make -n` prints them: what they run and where they listen."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from support.cluster import ROOT


def make_n(target: str, **variables: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "WORKER_"))}
    env.update(variables)
    done = subprocess.run(
        ["make", "-n", target], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


def celery_args(lines: list[str]) -> list[str]:
    (line,) = [x for x in lines if "/celery " in x]
    return shlex.split(line)


def test_edge_make_flower_listens_on_loopback_unless_told() -> None:
    args = celery_args(make_n("flower"))
    assert "--address=127.0.0.1" in args
    assert "--address=0.0.0.0" in celery_args(make_n("flower", FLOWER_ADDRESS="0.0.0.0"))


def test_edge_make_worker_is_the_readmes_worker_with_a_name_of_its_own() -> None:
    args = celery_args(make_n("worker"))
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"^celery -A pipeline worker .*$", readme, flags=re.MULTILINE)
    assert shown
    for command in shown:
        words = shlex.split(command.split("#")[0])
        for flag in ("-P", "-c", "-Q"):
            assert words[words.index(flag) + 1] == args[args.index(flag) + 1], command
        assert "-n" in words, command  # two workers on one host need two names
    # `make worker` twice on one host: the shell's pid makes each name unique.
    assert args[args.index("-n") + 1] == "worker-$$@%h"


def test_edge_make_demo_installs_the_runtime_only() -> None:
    lines = make_n("demo", MAKEFLAGS="-B")  # as on a fresh clone: every step runs
    installs = [x for x in lines if "pip install" in x and "-e" in x]
    assert installs and all("[dev]" not in x for x in installs), installs
    assert any("[dev]" in x for x in make_n("test", MAKEFLAGS="-B"))
