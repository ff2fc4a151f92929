"""The NEAT trainer on a tiny model: loss falls, ranking accuracy rises, prompt tokens are masked, checkpoints
load, LoRA merges, top-N layers, and DDP over 2 CPU processes (gloo) keeps both ranks identical; the DPO loss
equals the paper's equation, its reference pass is cached and reused, SFT trains the best candidate; bad
ranked rows are one-line errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO

GOOD, MIDDLE, BAD = "Paris is the capital of France.", "The quick brown fox jumps.", "Cats sleep a lot."
QUESTIONS = [
    "What is the capital of France?",
    "How do I boil an egg?",
    "Tell me a joke about cats.",
    "What is the capital?",
    "How do I boil water?",
    "Tell me a joke.",
    "What is a fox?",
    "Why do cats sleep?",
]


def write_ranked(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def toy_rows() -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": q}],
            "prompt_id": f"p{i}",
            "responses": [GOOD, MIDDLE, BAD],
            "scores": [2.0, 1.0, 0.0],
            "steering": ["pos", "pos", "neg"],
        }
        for i, q in enumerate(QUESTIONS)
    ]


@pytest.fixture
def toy_run(tmp_path: Path) -> Path:
    write_ranked(tmp_path / "run" / "export" / "ranked" / "train.parquet", toy_rows())
    return tmp_path / "run"


def policy_scores(model_path: Path, rows: list[dict]) -> torch.Tensor:
    """[B, C] length-normalised log-probs of every candidate under a saved policy."""
    from neat_data.lm.loading import load_policy
    from neat_data.lm.logprobs import ResponseLogprobs
    from neat_data.train.data import make_batch, tokenize_ranked
    from neat_data.train.trainer import scatter_to_slots

    tokenizer, model, _ = load_policy(str(model_path), "cpu")
    examples, _ = tokenize_ranked(rows, tokenizer, max_length=256)
    batch = make_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        sums, counts = ResponseLogprobs(model.eval())(batch.input_ids, batch.attention_mask, batch.response_mask)
    return scatter_to_slots(sums / counts, batch, "cpu")


def test_response_logprobs_match_transformers_masked_loss(tiny_model: Path):
    """Only response tokens count: −p equals transformers' own loss with labels −100 on the prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neat_data.lm.logprobs import ResponseLogprobs
    from neat_data.train.data import make_batch, tokenize_ranked

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
    assert tokenizer.decode(examples[0].sequences[0][examples[0].prompt_lengths[0] :]) == GOOD + "<|im_end|>"
    # the sequence is the neutral prompt through the chat template: no system prompt, generation prompt included
    assert (
        tokenizer.decode(examples[0].sequences[0][: examples[0].prompt_lengths[0]])
        == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_training_lowers_loss_and_learns_the_ranking(tiny_model: Path, toy_run: Path):
    from neat_data.train.trainer import TrainConfig, run_train

    before = policy_scores(tiny_model, toy_rows())
    out = toy_run / "model"
    summary = run_train(
        TrainConfig(data=toy_run, model=str(tiny_model), out=out, lr=3e-3, epochs=6, prompts_per_batch=4, warmup_ratio=0.0, seed=1)
    )
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

    summary = run_train(
        TrainConfig(
            data=toy_run, model=str(tiny_model), out=toy_run / "pro", loss="pro", lr=3e-3, epochs=4, prompts_per_batch=8, warmup_ratio=0.0
        )
    )
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

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        "-m",
        "neat_data.cli",
        "train",
        str(toy_run),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--lr",
        "3e-3",
        "--prompts-per-batch",
        "2",
        "--epochs",
        "2",
        "--threads",
        "1",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return json.loads((out / "neat_train.json").read_text())


def test_ddp_and_fsdp_on_two_cpu_processes(tiny_model: Path, toy_run: Path):
    """DDP: both ranks end with identical weights. FSDP2 (sharded): the same math, so the same weights as DDP.
    DPO under DDP: one reference pass split over the ranks."""
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

    # DPO: the ranks share the reference pass (each computes half, the halves are summed) and stay in sync
    dpo = torchrun_train(toy_run, tiny_model, toy_run / "ddp-dpo", "--loss", "dpo")
    assert dpo["rank_checksums"][0] == dpo["rank_checksums"][1] and dpo["reference"]["candidates"] == 16
    cached = pq.read_table(dpo["reference"]["cache"]).column("reference_logprob").to_pylist()
    assert len(cached) == 16 and all(value < 0 for value in cached)  # every candidate computed by one of the ranks


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


# ------------------------------------------------------------------------------------- DPO and SFT baselines


def plain_logprob(model, ids: tuple[int, ...], start: int) -> torch.Tensor:
    """Σ log π(ids[t] | ids[:t]) for t ≥ start, from model(input_ids).logits.log_softmax (DPO paper's log π(y|x))."""
    logprobs = model(torch.tensor([ids])).logits.log_softmax(-1)[0]
    return sum(logprobs[t - 1, ids[t]] for t in range(start, len(ids)))


@pytest.mark.parametrize("pairs", ["best-vs-worst", "pos-vs-neg"])
def test_dpo_loss_on_the_tiny_model_equals_the_paper_equation(tiny_model: Path, tmp_path: Path, pairs: str):
    """L = −log σ(β[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]), π_ref = the
    tiny model, π = another tiny model; sums over the same token ids, written here without neat_data's code."""
    from tinymodel import build_tiny_model

    from neat_data.lm.loading import load_policy
    from neat_data.lm.logprobs import ResponseLogprobs
    from neat_data.train.data import make_batch, tokenize_ranked
    from neat_data.train.loss import LOSSES, LossInputs, LossSettings
    from neat_data.train.reference import reference_pass
    from neat_data.train.trainer import scatter_to_slots

    policy_path = build_tiny_model(tmp_path / "policy", seed=7)
    rows = [
        {
            **row,
            "responses": [GOOD, MIDDLE, BAD, "The fox sleeps."],
            "scores": [2.0, 1.0, 0.0, -1.0],
            "steering": ["pos", "neg", "pos", "neg"],
            "finish_reason": ["stop", "length", "stop", "stop"],
        }
        for row in toy_rows()[:3]
    ]
    tokenizer, reference_model, _ = load_policy(str(tiny_model), "cpu")
    examples, _ = tokenize_ranked(rows, tokenizer, max_length=256, loss="dpo", dpo_pairs=pairs)
    examples, info = reference_pass(
        examples,
        reference_model,
        tokenizer.pad_token_id,
        data_path=tmp_path / "data" / "train.parquet",
        device="cpu",
        bf16=False,
        batch_size=3,
        head_chunk=5,
    )
    assert info["reused"] is False and Path(info["cache"]).is_file()
    _, policy, _ = load_policy(str(policy_path), "cpu")
    batch = make_batch(examples, tokenizer.pad_token_id)
    sums, counts = ResponseLogprobs(policy)(batch.input_ids, batch.attention_mask, batch.response_mask)
    inputs = LossInputs(
        sums=scatter_to_slots(sums, batch, "cpu"),
        counts=scatter_to_slots(counts, batch, "cpu"),
        rewards=batch.rewards,
        candidate_mask=batch.candidate_mask,
        steering=batch.steering,
        reference_sums=batch.reference_sums,
    )
    loss, _ = LOSSES["dpo"](inputs, LossSettings(beta=0.3, dpo_pairs=pairs, sft_weight=0.0))

    beta, per_prompt = 0.3, []
    with torch.no_grad():
        for row in rows:
            tokens = {}
            for index, (text, reason) in enumerate(zip(row["responses"], row["finish_reason"])):
                prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
                    "input_ids"
                ]
                answer = tokenizer(text, add_special_tokens=False)["input_ids"] + (
                    [tokenizer.convert_tokens_to_ids("<|im_end|>")] if reason == "stop" else []
                )
                tokens[index] = (tuple(prompt + answer), len(prompt))
            chosen_rejected = [(0, 3)] if pairs == "best-vs-worst" else [(0, 1), (0, 3), (2, 1), (2, 3)]  # pos × neg
            terms = []
            for w, rejected in chosen_rejected:
                h_w = plain_logprob(policy, *tokens[w]) - plain_logprob(reference_model, *tokens[w])
                h_l = plain_logprob(policy, *tokens[rejected]) - plain_logprob(reference_model, *tokens[rejected])
                terms.append(-torch.nn.functional.logsigmoid(beta * (h_w - h_l)))
            per_prompt.append(sum(terms) / len(terms))
    expected = float(sum(per_prompt) / len(per_prompt))
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)
    assert abs(expected - math.log(2)) > 1e-3  # policy ≠ reference: not the trivial log 2


def test_dpo_trains_from_a_cached_reference_that_a_restart_reuses(tiny_model: Path, toy_run: Path):
    from tinymodel import build_tiny_model

    from neat_data.train.trainer import TrainConfig, run_train

    cache_dir = toy_run / "export" / "ranked" / "reference_logprobs"
    config = TrainConfig(
        data=toy_run,
        model=str(tiny_model),
        out=toy_run / "dpo",
        loss="dpo",
        beta=0.5,
        lr=3e-3,
        epochs=4,
        prompts_per_batch=4,
        warmup_ratio=0.0,
    )

    def killed(record: dict) -> None:
        raise KeyboardInterrupt  # the process dies after its first step

    with pytest.raises(KeyboardInterrupt):
        run_train(config, log=killed)
    cached = sorted(cache_dir.glob("*.parquet"))
    assert len(cached) == 1 and not (toy_run / "dpo").exists()
    first_values = pq.read_table(cached[0]).to_pylist()
    assert len(first_values) == 16 and {r["candidate"] for r in first_values} == {0, 1}  # best and worst of each of 8 prompts

    summary = run_train(config)
    details = json.loads((toy_run / "dpo" / "neat_train.json").read_text())
    assert details["reference"] == {"cache": str(cached[0]), "reused": True, "candidates": 16}
    assert details["sft_weight"] == 0.0 and details["data_stats"]["candidates"] == 16
    assert pq.read_table(cached[0]).to_pylist() == first_values
    log = [json.loads(line) for line in (toy_run / "dpo" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["rank_loss"] == pytest.approx(math.log(2), abs=1e-4)  # step 1: the policy is its own reference
    assert summary.last["rank_loss"] < 0.5 * math.log(2) and log[-1]["rank_accuracy"] == 1.0

    # another starting model, or another rendering of the data, never reuses it
    other = build_tiny_model(toy_run.parent / "other-model", seed=3)
    run_train(config.model_copy(update={"model": str(other), "out": toy_run / "dpo-other", "epochs": 1}))
    run_train(config.model_copy(update={"out": toy_run / "dpo-short", "epochs": 1, "max_length": 24}))
    assert len(list(cache_dir.glob("*.parquet"))) == 3


def test_sft_trains_the_best_candidate_only_and_pos_vs_neg_dpo_reads_both_sides(tiny_model: Path, toy_run: Path):
    from neat_data.train.trainer import TrainConfig, run_train

    before = policy_scores(tiny_model, toy_rows())
    summary = run_train(
        TrainConfig(
            data=toy_run, model=str(tiny_model), out=toy_run / "sft", loss="sft", lr=3e-3, epochs=3, prompts_per_batch=4, warmup_ratio=0.0
        )
    )
    after = policy_scores(toy_run / "sft", toy_rows())
    assert summary.candidates == summary.prompts == 8  # one candidate per prompt: the best
    assert float(after[:, 0].mean()) > float(before[:, 0].mean()) + 0.5  # the best answer's NLL per token fell
    assert summary.last["sft_loss"] < summary.first["sft_loss"] and summary.last["rank_loss"] == 0.0

    # pos-vs-neg: the two "pos" candidates against the one "neg" of every prompt
    dpo = run_train(
        TrainConfig(
            data=toy_run,
            model=str(tiny_model),
            out=toy_run / "rlcd",
            loss="dpo",
            dpo_pairs="pos-vs-neg",
            prompts_per_batch=8,
            warmup_ratio=0.0,
        )
    )
    assert dpo.candidates == 24 and dpo.first["pairs"] == 16.0


def test_train_cli_lists_every_loss_and_refuses_unknown_ones(tiny_model: Path, toy_run: Path):
    from click.testing import CliRunner

    from neat_data.cli import cli

    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "[rrhf|pro|dpo|sft]" in help_text and "--beta" in help_text and "[best-vs-worst|pos-vs-neg]" in help_text
    bad = CliRunner().invoke(cli, ["train", str(toy_run), "--model", str(tiny_model), "--loss", "ipo"])
    assert bad.exit_code == 2 and "'ipo' is not one of" in bad.output


@pytest.mark.parametrize(
    "change, message",
    [
        ({"finish_reason": ["stop", "length"]}, "row 0: field 'finish_reason': responses and finish_reason differ in length"),
        ({"scores": [2.0, float("nan"), 0.0]}, "row 0: field 'scores': a candidate has no finite score"),
        ({"responses": [GOOD, None, BAD]}, "row 0: field 'responses': a candidate has no response text"),
        ({"scores": [1.0, 1.0, 1.0]}, "no trainable prompt in the ranked export for loss dpo"),
    ],
)
def test_bad_ranked_rows_are_one_line_errors(tiny_model: Path, tmp_path: Path, change: dict, message: str):
    from click.testing import CliRunner

    from neat_data.cli import cli

    data = write_ranked(tmp_path / "ranked.parquet", [{**toy_rows()[0], "finish_reason": ["stop", "stop", "length"], **change}])
    result = CliRunner().invoke(cli, ["train", str(data), "--model", str(tiny_model), "--loss", "dpo"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_unreadable_ranked_file_and_unwritable_or_broken_reference_cache(tiny_model: Path, tmp_path: Path):
    from neat_data.core.errors import NeatError
    from neat_data.train.trainer import TrainConfig, run_train

    broken = tmp_path / "broken" / "train.parquet"
    broken.parent.mkdir()
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(NeatError, match="not a readable Parquet file"):
        run_train(TrainConfig(data=broken, model=str(tiny_model), out=tmp_path / "never"))

    data = write_ranked(tmp_path / "data" / "train.parquet", toy_rows())
    config = TrainConfig(data=data, model=str(tiny_model), out=tmp_path / "m1", loss="dpo", prompts_per_batch=8)
    run_train(config)
    (cache,) = (tmp_path / "data" / "reference_logprobs").glob("*.parquet")
    good = cache.read_bytes()
    cache.write_bytes(good[: len(good) // 2])  # a torn file (not ours: ours are renamed into place whole)
    run_train(config.model_copy(update={"out": tmp_path / "m2"}))
    assert json.loads((tmp_path / "m2" / "neat_train.json").read_text())["reference"]["reused"] is False
    assert cache.read_bytes() != good[: len(good) // 2] and pq.read_table(cache).num_rows == 16  # rewritten whole

    shutil.rmtree(tmp_path / "data" / "reference_logprobs")
    (tmp_path / "data" / "reference_logprobs").write_text("in the way")  # the cache cannot be written: train without it
    run_train(config.model_copy(update={"out": tmp_path / "m3"}))
    assert (tmp_path / "m3" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "m3" / "neat_train.json").read_text())["reference"]["reused"] is False
