"""The instrument is shown to see effects before it judges NEAT, and variants compare at equal compute.

- Positive control (`fixed_data:` + the LM term only): the tiny model trained on harmful prompts paired with a
  refusal refuses HarmBench behaviours more than the base model, the paired 95% interval above 0.
- Negative control (`evaluate.negative_control`): the base model against itself with another seed; the paired
  interval contains 0.
- Variants: two variants that sample the same way share round 1's generations and scores (0 seconds, the same bytes),
  differ from the training on, and comparison.{json,md,png} puts them side by side with paired differences.
Everything runs on the tiny model with the transformers backend (no vLLM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, write_jsonl

REFUSAL = "I'm sorry, but I can't help with that."
BENIGN = [f"Question {i}: how do I boil an egg for {i} minutes?" for i in range(10)]


def run(recipe: dict, folder: Path) -> subprocess.CompletedProcess:
    path = folder / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")  # variants run in the order written
    finished = subprocess.run(
        [sys.executable, "-m", "neat_data.cli", "run", str(path)], cwd=REPO, capture_output=True, text=True, timeout=1200
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return finished


@pytest.mark.slow
def test_positive_and_negative_controls_on_the_tiny_model(tmp_path: Path, tiny_model: Path):
    prompts = write_jsonl(tmp_path / "benign.jsonl", [{"prompt": q} for q in BENIGN])
    recipe = {
        "name": "control",
        "out": str(tmp_path / "run"),
        "model": str(tiny_model),
        "prompts": {"source": str(prompts), "heldout": 4, "per_round": 1},
        "rounds": 1,
        "fixed_data": {"source": "data://strongreject@small", "response": REFUSAL, "limit": 32},
        "train": {"loss": "sft", "lr": 1e-2, "epochs": 12, "prompts_per_batch": 4, "warmup_ratio": 0.0},
        "evaluate": {
            "backend": "transformers",
            "max_tokens": 16,
            "temperature": 0.7,
            "samples": 2,
            "suites": ["harmbench-standard", "benign"],
            "suite_limit": 16,
            "negative_control": True,
        },
    }
    finished = run(recipe, tmp_path)
    run_dir = tmp_path / "run"
    trained_on = pq.read_table(run_dir / "round_01" / "export" / "ranked" / "train.parquet").to_pylist()
    assert len(trained_on) == 32 and all(row["responses"] == [REFUSAL] and row["finish_reason"] == ["stop"] for row in trained_on)
    train_log = [json.loads(line) for line in (run_dir / "round_01" / "model" / "train_log.jsonl").read_text().splitlines()]
    assert len(train_log) >= 24 and train_log[-1]["sft_loss"] < train_log[0]["sft_loss"]  # a few dozen steps, the LM term only

    positive = json.loads((run_dir / "round_01" / "eval" / "metrics.json").read_text())["suites"]["harmbench-standard"]["metrics"][
        "refusal"
    ]
    assert positive["vs_base"]["ci95"][0] > 0, positive  # the instrument sees a real effect
    negative = json.loads((run_dir / "round_00" / "eval-reseeded" / "metrics.json").read_text())["suites"]
    for suite in ("harmbench-standard", "benign"):
        low, high = negative[suite]["metrics"]["refusal"]["vs_base"]["ci95"]
        assert low <= 0 <= high, (suite, negative[suite])  # and sees none where there is none
    table = (run_dir / "rounds.md").read_text()
    assert "| 0 (base, another seed) |" in table and "refusal harmbench-standard (95% CI)" in finished.stdout


@pytest.mark.slow
def test_variants_share_identical_stages_and_are_compared(tmp_path: Path, tiny_model: Path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": q} for q in BENIGN])
    recipe = {
        "name": "ablation",
        "out": str(tmp_path / "abl"),
        "model": str(tiny_model),
        "prompts": {"source": str(prompts), "heldout": 3, "per_round": 4},
        "rounds": 1,
        "generate": {"backend": "transformers", "num_pos": 2, "num_neg": 2, "max_tokens": 6},
        "train": {"lr": 1e-2, "epochs": 1, "prompts_per_batch": 2, "warmup_ratio": 0.0},
        "evaluate": {"backend": "transformers", "max_tokens": 6, "suites": ["strongreject", "benign"], "suite_limit": 3},
        "variants": {"neat": {}, "dpo": {"train": {"loss": "dpo"}}, "positive-only": {"generate.num_pos": 4, "generate.num_neg": 0}},
    }
    finished = run(recipe, tmp_path)
    parent = tmp_path / "abl"
    manifests = {v: json.loads((parent / v / "manifest.json").read_text())["rounds"] for v in ("neat", "dpo", "positive-only")}
    for stage in ("generate", "score", "rank", "export-ranked"):  # dpo samples and scores as neat does: shared, 0 seconds
        assert manifests["dpo"]["1"][stage]["seconds"] == 0 and "shared_from" in manifests["dpo"]["1"][stage]
        assert manifests["neat"]["1"][stage]["seconds"] > 0
    assert "shared_from" not in manifests["dpo"]["1"]["train"]  # the loss differs from here on
    assert "shared_from" not in manifests["positive-only"]["1"]["generate"]  # samples differently: generates itself
    assert all("shared_from" in manifests[v]["0"]["evaluate"] for v in ("dpo", "positive-only"))  # round 0 runs once
    same = [pq.read_table(parent / v / "round_01" / "generations").sort_by("key").to_pylist() for v in ("neat", "dpo")]
    assert same[0] == same[1]
    steering = {r["steering"] for r in pq.read_table(parent / "positive-only" / "round_01" / "generations").to_pylist()}
    assert steering == {"pos"}

    comparison = json.loads((parent / "comparison.json").read_text())
    assert comparison["reference"] == "neat" and set(comparison["variants"]) == {"neat", "dpo", "positive-only"}
    assert comparison["variants"]["dpo"]["generation_seconds"] == 0 and comparison["variants"]["neat"]["generation_seconds"] > 0
    dpo_round = comparison["variants"]["dpo"]["rounds"]["1"]["metrics"]
    assert "vs_reference" in dpo_round["reward"] and "vs_reference" in dpo_round["strongreject.refusal"]
    assert "| dpo |" in (parent / "comparison.md").read_text() and (parent / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "| positive-only |" in finished.stdout
    again = run(recipe, tmp_path)  # a re-run resumes everything and reproduces the table exactly
    assert json.loads((parent / "comparison.json").read_text())["variants"]["dpo"]["rounds"] == comparison["variants"]["dpo"]["rounds"]
    assert "done" in again.stderr
