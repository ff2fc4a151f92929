"""The habits that keep the code as it is: ruff (lint and format) and mypy on neat_data/, clean, configured in
pyproject.toml. mypy is what checks that a backend's typed options and a stage's config agree."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


def tool(name: str) -> str:
    found = shutil.which(name, path=str(REPO / ".venv" / "bin")) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (bash scripts/setup.sh installs it from requirements/dev.txt)")
    return found


def test_ruff_lint_is_clean():
    result = run(tool("ruff"), "check", "neat_data", "tests", "benchmarks", "scripts")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_format_is_clean():
    result = run(tool("ruff"), "format", "--check", "neat_data", "tests", "benchmarks", "scripts")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.slow
def test_mypy_is_clean_on_neat_data():
    tool("mypy")
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
