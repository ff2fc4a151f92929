"""The score stage and its scorers: numbers checked against direct computations on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from neat_data.core.errors import NeatError
from neat_data.engines.base import Sampling
from neat_data.scorers.base import ScoreItem
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.stages.score import ScoreConfig, run_score
from neat_data.testing.recording_backend import RecordingBackend

PROMPT = [{"role": "user", "content": "How do I boil an egg?"}]


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory) -> Path:
    from tinymodel import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "tiny-rm")


def test_reward_model_batched_scores_equal_one_row_at_a_time(tiny_reward_model: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from neat_data.scorers.reward_model import RewardModelScorer

    responses = ["Seven minutes.", "Put the egg in boiling water for seven minutes, then cool it.", "No.", "Boil it " * 20]
    items = [ScoreItem(PROMPT, r, "pos", None, None) for r in responses]
    batched = RewardModelScorer(str(tiny_reward_model), batch_size=3, device="cpu").score(items)
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model, dtype=torch.float32).eval()
    for response, result in zip(responses, batched):
        text = tokenizer.apply_chat_template([*PROMPT, {"role": "assistant", "content": response}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            expected = model(**ids).logits[0, 0].item()
        assert result.error is None and result.score == pytest.approx(expected, abs=1e-5)
    assert len({round(r.score, 6) for r in batched}) == 4


def test_self_contrast_equals_the_direct_log_prob_difference(tiny_model: Path):
    """The score is the length-normalised log-prob difference of the same token ids, computed here with plain
    model(ids).logits.log_softmax: a finished response ends with the end-of-turn token, a truncated one does not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neat_data.scorers.self_contrast import SelfContrastScorer

    items = [
        ScoreItem(PROMPT, "Boil it for seven minutes.", "pos", "Be helpful.", "Be harmful.", "stop"),
        ScoreItem(PROMPT, "No idea, go away and stop asking me things.", "neg", "Be helpful.", "Be harmful.", "length"),
        ScoreItem(PROMPT, "x", "pos", "Be helpful.", None),
        ScoreItem(PROMPT, "", "pos", "Be helpful.", "Be harmful.", "stop"),
    ]
    results = SelfContrastScorer(str(tiny_model), batch_size=2, device="cpu").score(items)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def logprob(system: str, response: str, finished: bool) -> tuple[float, int]:
        prompt_ids = tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, *PROMPT], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + ([end] if finished else [])
        ids = torch.tensor([prompt_ids + response_ids])
        with torch.no_grad():
            logits = model(ids).logits[0].float()
        total = sum(torch.log_softmax(logits[p - 1], -1)[ids[0, p]].item() for p in range(len(prompt_ids), ids.shape[1]))
        return total, len(response_ids)

    for item, result in zip(items[:2], results[:2]):
        pos, count = logprob("Be helpful.", item.response, item.finish_reason == "stop")
        neg, _ = logprob("Be harmful.", item.response, item.finish_reason == "stop")
        assert result.score == pytest.approx((pos - neg) / count, abs=1e-5)
    assert results[2].score is None and "positive and negative" in results[2].error
    assert results[3].score is None and results[3].error == "empty response"


VIEWS = {"t.default", "transpose.int", "permute.default", "detach.default", "alias.default", "view.default", "_unsafe_view.default"}


def vocabulary_wide_rows(run, vocabulary: int) -> int:
    """The most rows of any vocabulary-wide tensor (last dim = vocabulary, views such as the head weight's
    transpose aside) an op produces while `run()` runs: logits, their float32 copies, log-softmaxes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    most = 0

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal most
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2 and tensor.shape[-1] == vocabulary and func.__name__ not in VIEWS:
                    most = max(most, tensor.numel() // vocabulary)
            return out

    with Watch():
        run()
    return most


def test_self_contrast_runs_the_output_head_on_response_rows_only(tiny_model: Path):
    """Long prompts, short responses: the head sees at most `head_chunk` response rows at a time — never the
    batch × length × vocabulary logits (nor a float32 copy of them) the scorer used to materialise."""
    from neat_data.scorers.self_contrast import SelfContrastScorer

    long_prompt = [{"role": "user", "content": "How do I boil an egg? " * 30}]
    items = [ScoreItem(long_prompt, f"Boil it for {n} minutes.", "pos", "Be helpful.", "Be harmful.", "stop") for n in range(8)]
    scorer = SelfContrastScorer(str(tiny_model), batch_size=16, device="cpu", head_chunk=4)
    vocabulary = scorer.model.config.vocab_size
    candidates = [scorer.renderer.render(long_prompt, item.response, "stop", system="Be helpful.") for item in items]
    response_rows = sum(c.response_length for c in candidates) * 2  # pos and neg renderings, one batch of 16
    full_rows = 16 * max(len(c.ids) for c in candidates)
    assert full_rows > 20 * response_rows  # the case where it matters
    results: list = []
    most = vocabulary_wide_rows(lambda: results.extend(scorer.score(items)), vocabulary)
    assert 0 < most <= 4  # one head chunk
    assert all(r.error is None for r in results)
    # the same scores with one big chunk (all response rows at once), still nowhere near batch × length
    wide = SelfContrastScorer(str(tiny_model), batch_size=16, device="cpu", head_chunk=4096)
    wide_results: list = []
    assert vocabulary_wide_rows(lambda: wide_results.extend(wide.score(items)), vocabulary) == response_rows
    assert [r.score for r in wide_results] == pytest.approx([r.score for r in results], abs=1e-6)


def make_run(prompts_file: Path, out: Path, fail_france: bool = False) -> Path:
    backend = RecordingBackend(fail_when=(lambda m: "boom" if "France" in m[-1]["content"] else None) if fail_france else None)
    run_generate(
        GenerateConfig(
            prompts=str(prompts_file), model="fake", out=out, num_pos=2, num_neg=2, num_neutral=1, sampling=Sampling(max_tokens=8)
        ),
        backend=backend,
        progress=False,
    )
    return out


def length_score(prompts, responses):
    return [len(r) + (0.5 if "France" in p[-1]["content"] else 0.0) for p, r in zip(prompts, responses)]


def test_score_stage_with_a_python_scorer_error_rows_and_floor(prompts_file: Path, tmp_path: Path, monkeypatch):
    run = make_run(prompts_file, tmp_path / "run", fail_france=True)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    summary = run_score(ScoreConfig(run=run, scorer="python:test_score:length_score"), progress=False)
    rows = pq.read_table(run / "scored").to_pylist()
    assert summary.rows == len(rows) == 20
    skipped = [r for r in rows if r["score_status"] == "skipped"]
    assert len(skipped) == 5 and all(r["score"] is None and r["status"] == "error" for r in skipped)
    for row in rows:
        if row["score_status"] == "ok":
            assert row["score"] == row["raw_score"] == len(row["response"]) and row["scorer"] == "python:test_score:length_score"
    floor = run_score(ScoreConfig(run=run, scorer="python:test_score:length_score", negative_score="floor"), overwrite=True, progress=False)
    rows = pq.read_table(run / "scored").to_pylist()
    ok = [r for r in rows if r["score_status"] == "ok"]
    negatives = [r["score"] for r in ok if r["steering"] == "neg"]
    others = [r["score"] for r in ok if r["steering"] != "neg"]
    assert len(set(negatives)) == 1 and negatives[0] < min(others) and floor.rows == 20
    assert all(r["negative_score"] == "floor" for r in rows)
    assert all(r["raw_score"] == len(r["response"]) for r in ok)  # the scorer's own value is kept
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["score"]["config"]["negative_score"] == "floor" and manifest["stages"]["score"]["finished"]


def test_score_is_resumable_and_refuses_another_scorer(prompts_file: Path, tmp_path: Path, monkeypatch):
    run = make_run(prompts_file, tmp_path / "run")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    run_score(ScoreConfig(run=run, scorer="python:test_score:length_score"), progress=False)
    again = run_score(ScoreConfig(run=run, scorer="python:test_score:length_score"), progress=False)
    assert again.scored_rows == 0 and again.rows == 20
    with pytest.raises(NeatError) as caught:
        run_score(ScoreConfig(run=run, scorer="python:test_score:nan_score"), progress=False)
    assert caught.value.field == "scorer" and "--overwrite" in caught.value.message


def nan_score(prompts, responses):
    return [math.nan] + ["x"] + [1.0] * (len(responses) - 2)


def test_non_numbers_from_a_user_scorer_become_error_rows(prompts_file: Path, tmp_path: Path, monkeypatch):
    run = make_run(prompts_file, tmp_path / "run")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    run_score(ScoreConfig(run=run, scorer="python:test_score:nan_score"), progress=False)
    rows = pq.read_table(run / "scored").to_pylist()
    errors = [r for r in rows if r["score_status"] == "error"]
    assert sorted(e["score_error"] for e in errors) == ["scorer returned 'x', not a number", "scorer returned nan"]


def test_self_contrast_stage_on_a_tiny_model_run(tiny_model: Path, prompts_file: Path, tmp_path: Path):
    run = tmp_path / "run"
    run_generate(
        GenerateConfig(prompts=str(prompts_file), model=str(tiny_model), out=run, num_pos=1, num_neg=1, sampling=Sampling(max_tokens=8)),
        backend=RecordingBackend(model=str(tiny_model)),
        progress=False,
    )
    summary = run_score(ScoreConfig(run=run, batch_size=3, device="cpu"), progress=False)  # reference = the generating model
    rows = pq.read_table(run / "scored").to_pylist()
    assert summary.counts["score_status"] == {"ok": 8}
    assert all(math.isfinite(r["score"]) and r["scorer"] == f"self-contrast:{tiny_model}" for r in rows)


def test_missing_generations_and_unknown_python_scorer(tmp_path: Path):
    with pytest.raises(NeatError, match="no generations"):
        run_score(ScoreConfig(run=tmp_path), progress=False)
    from neat_data.scorers.python_fn import PythonScorer

    with pytest.raises(NeatError, match="cannot import module"):
        PythonScorer("python:no_such_module_xyz:f")
    with pytest.raises(NeatError, match="expected python:<module>:<function>"):
        PythonScorer("python:justmodule")


@pytest.mark.vllm
def test_reward_model_through_vllm_pooling_equals_transformers(tiny_reward_model: Path):
    from neat_data.scorers.reward_model import RewardModelScorer, VLLMRewardScorer

    responses = ["Seven minutes.", "Put the egg in boiling water for seven minutes, then cool it.", "No."]
    items = [ScoreItem(PROMPT, r, "pos", None, None) for r in responses]
    fast = VLLMRewardScorer(str(tiny_reward_model), max_length=512)
    try:
        via_vllm = fast.score(items)
    finally:
        fast.llm.llm_engine.engine_core.shutdown()
    via_transformers = RewardModelScorer(str(tiny_reward_model), batch_size=2, device="cpu").score(items)
    assert [r.score for r in via_vllm] == pytest.approx([r.score for r in via_transformers], abs=1e-4)


# float32 on both sides; different kernels (vLLM-CPU's attention, a whole-sequence head): measured max |Δ| of the
# length-normalised score 1.0e-6 on the tiny model (below), 1.0e-5 over 256 SmolLM2 rows (benchmarks/self_contrast_backends.py)
VLLM_SCORE_TOLERANCE = 1e-4


def contrast_items() -> list[ScoreItem]:
    """Finished and truncated responses, a multi-turn prompt, two prompts' candidates interleaved, and the three
    items no backend can score (no pair texts, an empty response, one longer than max_length=96)."""
    multi_turn = [
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why?"},
        {"role": "user", "content": "About cats."},
    ]
    return [
        ScoreItem(PROMPT, "Boil it for seven minutes.", "pos", "Be helpful.", "Be harmful.", "stop"),
        ScoreItem(multi_turn, "Cats sleep a lot, and then they sleep some more.", "neg", "Be kind.", "Be rude.", "stop"),
        ScoreItem(PROMPT, "No idea, go away and stop asking me things.", "neg", "Be helpful.", "Be harmful.", "length"),
        ScoreItem(multi_turn, "Meow.", "pos", "Be kind.", "Be rude.", None),
        ScoreItem(PROMPT, "x", "pos", "Be helpful.", None),
        ScoreItem(PROMPT, "", "pos", "Be helpful.", "Be harmful.", "stop"),
        ScoreItem(PROMPT, "Boil it " * 60, "pos", "Be helpful.", "Be harmful.", "length"),
    ]


class GenerateCalls:
    """The real vllm.LLM, with the token ids of every `generate` call recorded (what the engine really scored)."""

    def __init__(self, llm):
        self._llm = llm
        self.calls: list[list[list[int]]] = []

    def generate(self, prompts, sampling_params, **kwargs):
        self.calls.append([list(prompt["prompt_token_ids"]) for prompt in prompts])
        return self._llm.generate(prompts, sampling_params, **kwargs)

    def __getattr__(self, name):
        return getattr(self._llm, name)


@pytest.mark.vllm
def test_self_contrast_through_vllm_prompt_logprobs_equals_transformers(vllm_llm, tiny_model: Path):
    """The vLLM path scores the same token ids as the reference (the end-of-turn token only for finished
    responses: a truncated or finished response scored the other way round would differ by far more than the
    tolerance), and refuses the same items with the same reasons."""
    from neat_data.scorers.self_contrast import SelfContrastScorer, VLLMSelfContrastScorer

    items = contrast_items()
    engine = GenerateCalls(vllm_llm)
    fast = VLLMSelfContrastScorer(str(tiny_model), llm=engine, max_length=96)
    reference = SelfContrastScorer(str(tiny_model), batch_size=3, device="cpu", max_length=96)
    via_vllm, via_transformers = fast.score(items), reference.score(items)
    assert len(via_vllm) == len(items) and fast.name == reference.name
    # one engine call for the chunk, both contexts in it, and exactly the reference's rendered token ids
    expected = [
        list(reference.renderer.render(item.prompt, item.response, item.finish_reason, system=system).ids)
        for item in items[:4]
        for system in (item.positive_system, item.negative_system)
    ]
    assert engine.calls == [expected]
    refused = ["self-contrast needs the pair's positive and negative system prompts", "empty response", "sequence longer than 96 tokens"]
    assert [r.error for r in via_vllm] == [r.error for r in via_transformers] == [None] * 4 + refused
    scores = [r.score for r in via_vllm[:4]]
    gap = max(abs(a - r.score) for a, r in zip(scores, via_transformers[:4]))
    print(f"vllm vs transformers, tiny model, float32: max |score difference| {gap:.2e}")
    assert gap <= VLLM_SCORE_TOLERANCE
    assert len({round(s, 5) for s in scores}) == 4  # four different numbers, not one constant
    # the end of turn matters: the same response scored as finished instead of truncated moves the score by far more
    finished = fast.score([ScoreItem(PROMPT, items[2].response, "neg", "Be helpful.", "Be harmful.", "stop")])[0].score
    assert abs(finished - scores[2]) > 10 * max(gap, 1e-6)
    # a scorer handed an engine leaves it running
    fast.close()
    assert vllm_llm.llm_engine is not None and VLLMSelfContrastScorer(str(tiny_model), llm=vllm_llm).score(items[:1])[0].error is None


@pytest.mark.vllm
def test_self_contrast_stage_on_vllm_equals_transformers_and_resumes(vllm_llm, tiny_model: Path, prompts_file: Path, tmp_path: Path):
    """The score stage on the vLLM path: every row as the transformers stage scores it; run again, nothing is rescored;
    a run scored on transformers goes on with vllm (the backend is not part of the score's identity: the same quantity)."""
    from neat_data.scorers.self_contrast import VLLMSelfContrastScorer

    runs = {}
    for name in ("transformers", "vllm"):
        runs[name] = tmp_path / name
        run_generate(
            GenerateConfig(
                prompts=str(prompts_file), model=str(tiny_model), out=runs[name], num_pos=2, num_neg=1, sampling=Sampling(max_tokens=8)
            ),
            backend=RecordingBackend(model=str(tiny_model)),
            progress=False,
        )
    run_score(ScoreConfig(run=runs["transformers"], batch_size=4, device="cpu"), progress=False)
    fast = VLLMSelfContrastScorer(str(tiny_model), llm=vllm_llm)
    summary = run_score(ScoreConfig(run=runs["vllm"], backend="vllm", flush_every=5), scorer=fast, progress=False)
    reference = {r["key"]: r for r in pq.read_table(runs["transformers"] / "scored").to_pylist()}
    rows = pq.read_table(runs["vllm"] / "scored").to_pylist()
    assert summary.counts["score_status"] == {"ok": 12} and {r["key"] for r in rows} == set(reference)
    for row in rows:
        assert row["score"] == pytest.approx(reference[row["key"]]["score"], abs=VLLM_SCORE_TOLERANCE)
        assert row["scorer"] == reference[row["key"]]["scorer"] == f"self-contrast:{tiny_model}"
    again = run_score(ScoreConfig(run=runs["vllm"], backend="vllm"), scorer=fast, progress=False)
    assert again.scored_rows == 0 and again.rows == 12
    switched = run_score(ScoreConfig(run=runs["transformers"], backend="vllm"), scorer=fast, progress=False)
    assert switched.scored_rows == 0 and switched.rows == 12
    manifest = json.loads((runs["vllm"] / "manifest.json").read_text())
    assert manifest["stages"]["score"]["config"]["backend"] == "vllm" and manifest["stages"]["score"]["finished"]


def test_ray_actors_get_a_tensor_parallel_self_contrast_engines_gpus():
    from neat_data.scorers import ScorerOptions, ray_gpus_per_actor

    assert ray_gpus_per_actor(ScorerOptions(backend="vllm", tensor_parallel_size=4)) == 4.0
    assert ray_gpus_per_actor(ScorerOptions(backend="vllm", tensor_parallel_size=4, ray_gpus_per_actor=2)) == 2
    assert ray_gpus_per_actor(ScorerOptions(backend="transformers", tensor_parallel_size=4)) is None
    assert ray_gpus_per_actor(ScorerOptions(scorer="reward-model", backend="vllm", tensor_parallel_size=4)) is None
    assert ray_gpus_per_actor(ScorerOptions(backend="vllm")) is None
