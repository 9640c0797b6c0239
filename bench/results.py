"""bench/RESULTS.md holds one section per benchmark, between markers."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(begin: str, end: str, section: str) -> None:
    """Replace the section between `begin` and `end` (appended when absent); others stay.

    Written to a temporary file and renamed: benchmarks may write their sections of
    the same file one after the other.
    """
    block = f"{begin}\n{section}{end}"
    if RESULTS.exists():
        text = RESULTS.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = "# Benchmarks\n\n" + block + "\n"
    tmp = RESULTS.with_suffix(f".md.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, RESULTS)


def cpu_model() -> str:
    """The CPU's model name, for the "made on what machine" line."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
