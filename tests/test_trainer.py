"""The NEAT trainer on a tiny model: loss falls, ranking accuracy rises, prompt tokens are masked, checkpoints
load, LoRA merges, top-N layers, and DDP over 2 CPU processes (gloo) keeps both ranks identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import REPO

GOOD, MIDDLE, BAD = "Paris is the capital of France.", "The quick brown fox jumps.", "Cats sleep a lot."
QUESTIONS = ["What is the capital of France?", "How do I boil an egg?", "Tell me a joke about cats.", "What is the capital?",
             "How do I boil water?", "Tell me a joke.", "What is a fox?", "Why do cats sleep?"]


def write_ranked(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def toy_rows() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": q}], "prompt_id": f"p{i}", "responses": [GOOD, MIDDLE, BAD],
             "scores": [2.0, 1.0, 0.0], "steering": ["pos", "pos", "neg"]} for i, q in enumerate(QUESTIONS)]


@pytest.fixture
def toy_run(tmp_path: Path) -> Path:
    write_ranked(tmp_path / "run" / "export" / "ranked" / "train.parquet", toy_rows())
    return tmp_path / "run"


def policy_scores(model_path: Path, rows: list[dict]) -> torch.Tensor:
    """[B, C] length-normalised log-probs of every candidate under a saved policy."""
    from neat_data.train.data import make_batch, tokenize_ranked
    from neat_data.train.forward import ResponseLogprobs, load_policy
    from neat_data.train.trainer import scatter_scores

    tokenizer, model, _ = load_policy(str(model_path), "cpu")
    examples, _ = tokenize_ranked(rows, tokenizer, max_length=256)
    batch = make_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        sums, counts = ResponseLogprobs(model.eval())(batch.input_ids, batch.attention_mask, batch.response_mask)
    return scatter_scores(sums / counts, batch, "cpu")


def test_response_logprobs_match_transformers_masked_loss(tiny_model: Path):
    """Only response tokens count: −p equals transformers' own loss with labels −100 on the prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neat_data.train.data import make_batch, tokenize_ranked
    from neat_data.train.forward import ResponseLogprobs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    examples, stats = tokenize_ranked(toy_rows()[:2], tokenizer, max_length=256)
    batch = make_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        sums, counts = ResponseLogprobs(model, head_chunk=5)(batch.input_ids, batch.attention_mask, batch.response_mask)
        for row, (ids, start) in enumerate((seq, ex.prompt_lengths[0]) for ex in examples for seq in ex.sequences):
            labels = torch.tensor([-100] * start + list(ids[start:]))
            reference = model(input_ids=torch.tensor([ids]), labels=labels.unsqueeze(0)).loss
            assert float(-sums[row] / counts[row]) == pytest.approx(float(reference), rel=1e-5)
            assert int(counts[row]) == len(ids) - start  # response tokens + the end-of-turn token
    assert stats.response_tokens == int(counts.sum())
    assert tokenizer.decode(examples[0].sequences[0][examples[0].prompt_lengths[0]:]) == GOOD + "<|im_end|>"
    # the sequence is the neutral prompt through the chat template: no system prompt, generation prompt included
    assert tokenizer.decode(examples[0].sequences[0][: examples[0].prompt_lengths[0]]) == \
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def test_training_lowers_loss_and_learns_the_ranking(tiny_model: Path, toy_run: Path):
    from neat_data.train.trainer import TrainConfig, run_train

    before = policy_scores(tiny_model, toy_rows())
    out = toy_run / "model"
    summary = run_train(TrainConfig(data=toy_run, model=str(tiny_model), out=out, lr=3e-3, epochs=6, prompts_per_batch=4,
                                    warmup_ratio=0.0, seed=1))
    after = policy_scores(out, toy_rows())
    assert summary.steps == 12 and summary.prompts == 8 and summary.candidates == 24
    assert summary.last["loss"] < summary.first["loss"]
    # good > middle > bad under the trained policy for every prompt, which the random init does not have
    assert bool(((after[:, 0] > after[:, 1]) & (after[:, 1] > after[:, 2])).all())
    assert not bool(((before[:, 0] > before[:, 1]) & (before[:, 1] > before[:, 2])).all())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert {"loss", "rank_loss", "sft_loss", "rank_accuracy", "grad_norm", "lr", "tokens_per_s"} <= set(log[0])
    assert log[-1]["rank_accuracy"] == 1.0 and log[0]["rank_accuracy"] < 1.0
    details = json.loads((out / "neat_train.json").read_text())
    assert details["config"]["loss"] == "rrhf" and details["sft_weight"] == 1.0 and details["save_dtype"] == "float32"
    assert not out.with_name("model.partial").exists()
    # the saved folder is a complete HF model with the chat template, loadable on its own
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template
    AutoModelForCausalLM.from_pretrained(out)


def test_pro_loss_trains_too(tiny_model: Path, toy_run: Path):
    from neat_data.train.trainer import TrainConfig, run_train

    summary = run_train(TrainConfig(data=toy_run, model=str(tiny_model), out=toy_run / "pro", loss="pro", lr=3e-3, epochs=4,
                                    prompts_per_batch=8, warmup_ratio=0.0))
    assert summary.last["loss"] < summary.first["loss"]
    assert json.loads((toy_run / "pro" / "neat_train.json").read_text())["sft_weight"] == pytest.approx(0.05 * 4)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_lora_is_merged_and_top_layers_freeze_the_rest(tiny_model: Path, toy_run: Path):
    from neat_data.train.trainer import TrainConfig, run_train

    base = _weights(tiny_model)
    run_train(TrainConfig(data=toy_run, model=str(tiny_model), out=toy_run / "lora", lr=1e-2, lora_rank=4, warmup_ratio=0.0))
    lora = _weights(toy_run / "lora")
    assert set(lora) == set(base) and not any("lora" in name for name in lora)  # a plain model, adapters merged
    assert not torch.equal(lora["model.layers.0.mlp.down_proj.weight"], base["model.layers.0.mlp.down_proj.weight"])
    assert torch.equal(lora["model.embed_tokens.weight"], base["model.embed_tokens.weight"])

    run_train(TrainConfig(data=toy_run, model=str(tiny_model), out=toy_run / "top", lr=1e-2, top_layers=1, warmup_ratio=0.0))
    top = _weights(toy_run / "top")
    assert not torch.equal(top["model.layers.1.mlp.down_proj.weight"], base["model.layers.1.mlp.down_proj.weight"])
    for frozen in ("model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"):
        assert torch.equal(top[frozen], base[frozen])


def torchrun_train(toy_run: Path, tiny_model: Path, out: Path, *extra: str) -> dict:
    from neat_data.testing.fake_openai_server import _free_port

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "neat_data.cli",
               "train", str(toy_run), "--model", str(tiny_model), "--out", str(out), "--lr", "3e-3", "--prompts-per-batch", "2",
               "--epochs", "2", "--threads", "1", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return json.loads((out / "neat_train.json").read_text())


def test_ddp_and_fsdp_on_two_cpu_processes(tiny_model: Path, toy_run: Path):
    """DDP: both ranks end with identical weights. FSDP2 (sharded): the same math, so the same weights as DDP."""
    ddp = torchrun_train(toy_run, tiny_model, toy_run / "ddp")
    assert ddp["world_size"] == 2 and ddp["fsdp"] is False
    checksums = ddp["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # both ranks hold the same weights after training
    # 8 prompts / 2 per batch / 2 ranks = 2 steps per epoch; the data was split, not repeated per rank
    assert ddp["summary"]["steps"] == 4
    base, ddp_weights = _weights(tiny_model), _weights(toy_run / "ddp")
    assert not torch.equal(ddp_weights["model.layers.0.mlp.down_proj.weight"], base["model.layers.0.mlp.down_proj.weight"])

    fsdp = torchrun_train(toy_run, tiny_model, toy_run / "fsdp", "--fsdp")
    assert fsdp["fsdp"] is True and fsdp["summary"]["steps"] == 4
    fsdp_weights = _weights(toy_run / "fsdp")
    assert set(fsdp_weights) == set(ddp_weights)
    for name, tensor in ddp_weights.items():
        assert torch.allclose(fsdp_weights[name], tensor, atol=1e-5), name
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(toy_run / "fsdp")


def test_train_cli_on_a_parquet_file_writes_next_to_it(tiny_model: Path, tmp_path: Path):
    from click.testing import CliRunner

    from neat_data.cli import cli

    data = write_ranked(tmp_path / "exports" / "ranked.parquet", toy_rows())
    result = CliRunner().invoke(cli, ["train", str(data), "--model", str(tiny_model), "--prompts-per-batch", "8", "--loss", "pro"])
    assert result.exit_code == 0, result.output
    assert "1 steps on 8 prompts × 3.0 candidates" in result.output
    assert json.loads((tmp_path / "exports" / "model" / "neat_train.json").read_text())["config"]["loss"] == "pro"
    bad = CliRunner().invoke(cli, ["train", str(tmp_path / "missing"), "--model", str(tiny_model)])
    assert bad.exit_code == 2 and "no ranked export found" in bad.output
