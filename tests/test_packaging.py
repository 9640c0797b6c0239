"""The distribution builds without setuptools warnings and ships the Lua scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from support.cluster import ROOT


def test_the_wheel_builds_without_warnings_and_holds_the_lua_scripts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("settings", "budget", "tasks", "pipeline", "simulator"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # The venv's setuptools (a dev dependency, pinned like the build requirement): no
    # network needed.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "warning" not in output.lower(), output
    (wheel,) = (tmp_path / "dist").glob("quotaflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for script in (ROOT / "budget" / "lua").glob("*.lua"):
        assert f"budget/lua/{script.name}" in names
    for script in (ROOT / "tasks" / "lua").glob("*.lua"):
        assert f"tasks/lua/{script.name}" in names
    assert any(n.endswith("METADATA") for n in names)
