"""`neat-data run` on a tiny recipe: 2 rounds end to end through the real vLLM-CPU engine, killed in the middle
of round 2 and resumed without redoing finished stages; round 2 really samples from round 1's weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO, write_jsonl

QUESTIONS = [
    "How do I boil an egg?",
    "What is the capital of France?",
    "Tell me a joke about cats.",
    "What is a fox?",
    "How do I boil water?",
    "Tell me a joke.",
    "Why do cats sleep?",
    "What is the capital?",
    "Is the fox quick?",
    "How long do I boil an egg?",
    "What is a lazy dog?",
    "Tell me about France.",
]


def recipe_file(tmp_path: Path, model: Path, **changes) -> Path:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])
    recipe = {
        "name": "tiny",
        "out": str(tmp_path / "runs" / "tiny"),
        "model": str(model),
        "prompts": {"source": str(prompts), "heldout": 3, "per_round": 4},
        "pairs": ["harmless"],
        "rounds": 2,
        "generate": {
            "backend": "vllm",
            "num_pos": 2,
            "num_neg": 2,
            "max_tokens": 8,
            "options": {"max_model_len": 512, "kv_cache_gb": 0.25},
        },
        "score": {"scorer": "self-contrast"},
        "exports": ["ranked", "trl"],
        "train": {"lr": 1e-2, "epochs": 3, "prompts_per_batch": 2, "warmup_ratio": 0.0},
        "evaluate": {"backend": "transformers", "max_tokens": 8},
        **changes,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def mean_logprob(model_path: Path, rows: list[dict]) -> float:
    """Mean per-token log-prob of the responses, under the exact (steered) prompt they were sampled with."""
    from neat_data.lm.loading import load_policy
    from neat_data.lm.logprobs import ResponseLogprobs
    from neat_data.train.data import make_batch, tokenize_ranked

    tokenizer, model, _ = load_policy(str(model_path), "cpu")
    ranked = [
        {
            "prompt": [{"role": "system", "content": r["system_prompt"]}, *r["prompt"]],
            "prompt_id": r["key"],
            "responses": [r["response"]],
            "scores": [0.0],
        }
        for r in rows
    ]
    examples, _ = tokenize_ranked(ranked, tokenizer, max_length=512)
    with torch.no_grad():
        batch = make_batch(examples, tokenizer.pad_token_id)
        sums, counts = ResponseLogprobs(model.eval())(batch.input_ids, batch.attention_mask, batch.response_mask)
    return float(sums.sum() / counts.sum())


@pytest.mark.vllm
def test_two_rounds_killed_and_resumed(tiny_model: Path, tmp_path: Path):
    pytest.importorskip("vllm")
    recipe = recipe_file(tmp_path, tiny_model)
    run_dir = tmp_path / "runs" / "tiny"
    command = [sys.executable, "-m", "neat_data.cli", "run", str(recipe)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}

    # 1. start, and SIGKILL the whole process group once round 2's generate stage is under way
    log = open(tmp_path / "first.log", "wb")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 600
    while not (run_dir / "round_02" / "configs" / "generate.json").exists():
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "round 2 never started"
        time.sleep(0.5)
    time.sleep(8)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["rounds"]["1"]["train"]["finished"] and "generate" not in manifest["rounds"].get("2", {})
    first_seconds = {name: entry["seconds"] for name, entry in manifest["rounds"]["1"].items()}

    # 2. the same command finishes the run, skipping every finished stage
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    for stage in ("evaluate", "generate", "score", "rank", "export-ranked", "export-trl", "train"):
        assert f"round 1 · {stage}: done" in finished.stderr
    assert "round 0 · evaluate: done" in finished.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {name: entry["seconds"] for name, entry in manifest["rounds"]["1"].items()} == first_seconds
    assert all(entry["finished"] for k in ("0", "1", "2") for entry in manifest["rounds"][k].values())

    # 3. the artefacts of every round, read back
    for k in (1, 2):
        folder = run_dir / f"round_{k:02d}"
        generations = pq.read_table(folder / "generations").to_pylist()
        assert len(generations) == 4 * 4 and len({r["key"] for r in generations}) == 16  # exactly once after the kill
        assert all(r["status"] == "ok" and r["backend"] == "vllm" for r in generations)
        assert pq.read_table(folder / "export" / "ranked" / "train.parquet").num_rows == 4
        assert {"prompt", "chosen", "rejected"} <= set(pq.read_table(folder / "export" / "trl" / "train.parquet").column_names)
        assert (folder / "model" / "model.safetensors").exists() and (folder / "model" / "train_log.jsonl").exists()
        metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        evaluated = [r for r in pq.read_table(folder / "eval" / "scored").to_pylist() if r["steering"] == "none"]
        assert len(evaluated) == 3 and {r["model"] for r in evaluated} == {str(folder / "model")}
        scored = [r["score"] for r in evaluated if r["score_status"] == "ok"]  # an empty 8-token reply is a score error row
        assert metrics["prompts"] == len(scored) >= 1 and metrics["reward_mean"] == pytest.approx(sum(scored) / len(scored))
        assert metrics["reward_ci95"][0] <= metrics["reward_mean"] <= metrics["reward_ci95"][1]
        assert 0.0 <= metrics["win_rate_vs_base"] <= 1.0 and metrics["perplexity"] > 1.0
    heldout = {json.loads(line)["prompt_id"] for line in (run_dir / "prompts" / "heldout.jsonl").read_text().splitlines()}
    trained = {r["prompt_id"] for k in (1, 2) for r in pq.read_table(run_dir / f"round_{k:02d}" / "generations").to_pylist()}
    assert len(trained) == 8 and not heldout & trained  # fresh slices, held-out never trained on

    # 4. round 2 sampled from round 1's weights: its responses are far likelier under round 1's model than the base's
    round_two = pq.read_table(run_dir / "round_02" / "generations").to_pylist()
    round_one_model = run_dir / "round_01" / "model"
    assert {r["model"] for r in round_two} == {str(round_one_model)}
    assert mean_logprob(round_one_model, round_two) > mean_logprob(tiny_model, round_two) + 0.5

    # 5. the table and the curve
    rows = json.loads((run_dir / "rounds.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[0]["win_rate_vs_base"] is None
    assert all(r["reward_mean"] is not None and r["perplexity"] for r in rows)
    assert rows[1]["train_tokens"] > 0 and rows[2]["pairs"] == 4
    assert (run_dir / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 0 (base) |" in finished.stdout and "| 2 |" in finished.stdout


def test_recipe_errors_name_file_and_field(tmp_path: Path, tiny_model: Path):
    from neat_data.core.errors import NeatError
    from neat_data.rounds.recipe import load_recipe

    recipe = recipe_file(tmp_path, tiny_model)
    assert load_recipe(recipe, ["rounds=3", "train.lr=1e-4", "generate.num_neg=0"]).train.stage_fields()["lr"] == 1e-4
    with pytest.raises(NeatError, match="field 'generate.num_neg'"):
        load_recipe(recipe, ["generate.num_neg=-1"])
    with pytest.raises(NeatError, match="field 'trainer'"):
        load_recipe(recipe, ["trainer=1"])
    with pytest.raises(NeatError, match="tiny.yaml: field 'train.lr'"):
        load_recipe(recipe, ["train.lr=-1"])
    with pytest.raises(NeatError, match="field 'train.top_layer'"):
        load_recipe(recipe, ["train.top_layer=2"])
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(NeatError, match="broken.yaml: row"):
        load_recipe(tmp_path / "broken.yaml")


def test_run_refuses_another_recipe_and_too_few_prompts(tmp_path: Path, tiny_model: Path):
    finished = subprocess.run(
        [sys.executable, "-m", "neat_data.cli", "run", str(recipe_file(tmp_path, tiny_model)), "--set", "rounds=9"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2 and "needs 39 prompts; the source has 12" in finished.stderr
    assert len(finished.stderr.strip().splitlines()) == 1
    run_dir = tmp_path / "runs" / "tiny"
    assert not run_dir.exists()  # a recipe that fails validation records nothing: the corrected command is not refused
    from neat_data.rounds.recipe import load_recipe, recipe_identity

    run_dir.mkdir(parents=True)  # a folder a finished run of the unchanged recipe left
    manifest = {"recipe": recipe_identity(load_recipe(recipe_file(tmp_path, tiny_model))), "rounds_planned": 1}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    finished = subprocess.run(
        [sys.executable, "-m", "neat_data.cli", "run", str(recipe_file(tmp_path, tiny_model)), "--set", "seed=5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2 and "made with another recipe (changed: seed)" in finished.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["recipe"] == manifest["recipe"]
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "manifest.json").write_text(json.dumps({"stages": {"generate": {}}}))
    finished = subprocess.run(
        [sys.executable, "-m", "neat_data.cli", "run", str(recipe_file(tmp_path, tiny_model)), "--set", f"out={tmp_path / 'single'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2 and "holds a single-stage run" in finished.stderr
    assert json.loads((tmp_path / "single" / "manifest.json").read_text()) == {"stages": {"generate": {}}}


def test_bundled_recipes_are_valid():
    from neat_data.core.resources import bundled_dir
    from neat_data.rounds.recipe import load_recipe, plan_round

    quickstart = load_recipe(bundled_dir("pipelines") / "quickstart.yaml")
    assert quickstart.rounds == 2 and quickstart.train.stage_fields()["loss"] == "rrhf"
    # gated on the checks its data passes; truncated and refusal-flip FAIL on it (docs/EFFICACY.md) and are reported only
    assert quickstart.audit.stage_fields() == {"fail_on": ["length", "duplicates", "near-duplicates", "ties"]}
    assert (
        all(Path(s).is_file() or s.startswith("data://") for s in quickstart.prompts.sources())
        and Path(quickstart.prompts.heldout_source).is_file()
    )
    hh = load_recipe(bundled_dir("pipelines") / "hh-rlhf.yaml", ["model=Qwen/Qwen2.5-0.5B-Instruct", "rounds=3"])
    planned = plan_round(hh, Path("runs/hh-rlhf"), 2)
    assert [stage.label for stage in planned] == ["generate", "score", "rank", "audit", "export-ranked", "export-trl", "train", "evaluate"]
    assert [stage.kind.name for stage in planned] == ["generate", "score", "rank", "audit", "export", "export", "train", "evaluate"]
    generate = planned[0].config
    assert generate.model == str(Path("runs/hh-rlhf/round_01/model")) and generate.round == 2
    # what each stage reads: its key is made of theirs (variants share a stage only when all of them are the same)
    assert {stage.label: stage.reads for stage in planned} == {
        "generate": [("train", 1)],
        "score": [("generate", 2)],
        "rank": [("score", 2)],
        "audit": [("rank", 2), ("score", 2)],  # the gate: the exports read it, so they come after it
        "export-ranked": [("audit", 2), ("rank", 2), ("score", 2)],
        "export-trl": [("audit", 2), ("rank", 2), ("score", 2)],
        "train": [("export-ranked", 2), ("train", 1)],
        "evaluate": [("train", 2), ("evaluate", 0)],
    }
    assert [folder for stage in planned for folder in stage.outputs()] == [
        "generations",
        "scored",
        "ranked",
        "audit",
        "export/ranked",
        "export/trl",
        "model",
        "eval",
    ]


def test_a_failing_stage_stops_the_run_with_its_log(tmp_path: Path, tiny_model: Path):
    broken = tmp_path / "broken-model"  # a folder that passes the up-front model check and fails to load in the stage
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    recipe = recipe_file(tmp_path, broken)
    finished = subprocess.run(
        [sys.executable, "-m", "neat_data.cli", "run", str(recipe)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    run_dir = tmp_path / "runs" / "tiny"
    assert finished.returncode == 2
    assert f"error: {run_dir}/round_00/configs/evaluate.json: stage evaluate of round 0 failed (exit code 2" in finished.stderr
    assert "broken-model: field 'model': backend 'transformers' could not start" in finished.stderr  # the stage's own line, from its log
    assert (run_dir / "round_00" / "logs" / "evaluate.log").exists()
    assert "0" not in json.loads((run_dir / "manifest.json").read_text()).get("rounds", {})  # nothing recorded as finished
