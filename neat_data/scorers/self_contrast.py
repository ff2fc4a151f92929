"""Contrastive self-reward (no reward model): how much more likely a response is under the positive system
prompt than under the negative one, under a fixed reference model (default: the model that generated it).

    s(y | x) = (1/|y|) [ log π_ref(y | pos, x) − log π_ref(y | neg, x) ]

Both renderings come from `neat_data.lm.render.CandidateRenderer` (the neutral prompt with the pair's
system prompt in the model's system mode, generation prompt, the response tokenized on its own, and the
end-of-turn token only when the response finished), the same rendering the trainer uses without the
system prompt; |y| counts the response tokens, the end-of-turn token included when present.

Two backends compute the same Σ log π over those token ids (`ContrastScorer.score` is shared: rendering,
checks, the difference):
- `SelfContrastScorer` (transformers, the reference): `neat_data.lm.logprobs.ResponseLogprobs` — the
  trainer's module: sums over the response tokens only, the output head run on response rows only, one
  chunk of logits at a time — in length-sorted batches with attention masks (batching does not change scores).
- `VLLMSelfContrastScorer` (`--backend vllm`): vLLM's prompt log-probs of the full rendered sequences, sent
  as token ids (`max_tokens=1`, `prompt_logprobs=0`: the log-prob of each actual prompt token, from the raw
  logits, in float32), every candidate of a chunk in one `LLM.generate` call, both contexts on one engine.
  vLLM computes them over the whole sequence (the head runs on prompt rows too) but at engine speed;
  the scores equal the reference within float32 rounding (tests/test_score.py, benchmarks/self_contrast_backends.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neat_data.lm.loading import load_scoring_model
from neat_data.lm.render import Candidate, CandidateRenderer
from neat_data.scorers.base import ScoreItem, ScoreResult

if TYPE_CHECKING:
    from neat_data.engines.vllm_backend import VLLMOptions


class ContrastScorer:
    """The score from two renderings per item; subclasses say how Σ log π of a candidate's response is computed."""

    name: str
    renderer: CandidateRenderer
    max_length: int

    def response_logprobs(self, candidates: list[Candidate]) -> list[float | str]:
        """Σ log π(token) over the response tokens of each candidate (end-of-turn token included when present),
        or the reason it could not be computed."""
        raise NotImplementedError

    def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(items)
        candidates: list[Candidate] = []
        owners: list[tuple[int, int]] = []  # (item index, number of response tokens)
        for index, item in enumerate(items):
            if not item.positive_system or not item.negative_system:
                results[index] = ScoreResult(None, "self-contrast needs the pair's positive and negative system prompts")
                continue
            if not self.renderer.response_ids(item.response):
                results[index] = ScoreResult(None, "empty response")
                continue
            positive = self.renderer.render(item.prompt, item.response, item.finish_reason, system=item.positive_system)
            negative = self.renderer.render(item.prompt, item.response, item.finish_reason, system=item.negative_system)
            if max(len(positive.ids), len(negative.ids)) > self.max_length:
                results[index] = ScoreResult(None, f"sequence longer than {self.max_length} tokens")
                continue
            candidates += [positive, negative]
            owners.append((index, positive.response_length))
        logprobs = self.response_logprobs(candidates) if candidates else []
        for position, (index, response_tokens) in enumerate(owners):
            pos, neg = logprobs[2 * position], logprobs[2 * position + 1]
            if isinstance(pos, str) or isinstance(neg, str):
                results[index] = ScoreResult(None, pos if isinstance(pos, str) else str(neg))
            else:
                results[index] = ScoreResult((pos - neg) / response_tokens)
        return [r for r in results if r is not None]


class SelfContrastScorer(ContrastScorer):
    """The reference path: transformers, our own log-prob module (the trainer's)."""

    def __init__(self, model: str, *, batch_size: int = 8, device: str = "auto", max_length: int | None = None, head_chunk: int = 1024):
        from neat_data.lm.logprobs import ResponseLogprobs

        self.name = f"self-contrast:{model}"
        self.tokenizer, self.model, self.device, self.pad_id, longest = load_scoring_model(model, "AutoModelForCausalLM", device)
        self.renderer = CandidateRenderer(self.tokenizer)
        self.logprobs = ResponseLogprobs(self.model, head_chunk=head_chunk)
        self.batch_size = batch_size
        self.max_length = max_length or longest

    def response_logprobs(self, candidates: list[Candidate]) -> list[float | str]:
        from neat_data.lm.logprobs import candidate_logprobs

        values = candidate_logprobs(
            self.logprobs,
            [c.ids for c in candidates],
            [c.prompt_length for c in candidates],
            self.pad_id,
            batch_size=self.batch_size,
            device=self.device,
        )
        return [total for total, _ in values]


class VLLMSelfContrastScorer(ContrastScorer):
    """The same score from vLLM's prompt log-probs. `llm`: an engine already started (tests share one);
    else one is started from `options` (the generate stage's `VLLMOptions`: dtype auto = float32 on CPU)."""

    def __init__(self, model: str, *, options: VLLMOptions | None = None, max_length: int | None = None, llm: Any = None):
        from transformers import AutoTokenizer

        from neat_data.core.models import resolve_model
        from neat_data.engines.vllm_backend import VLLMOptions, start_engine

        self.name = f"self-contrast:{model}"
        path = resolve_model(model)
        self.llm = llm if llm is not None else start_engine(path, options or VLLMOptions(), seed=0)
        self._owns_engine = llm is None
        # the transformers tokenizer of the same folder: the token ids are the reference path's, by construction
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.renderer = CandidateRenderer(self.tokenizer)
        fits = self.llm.llm_engine.model_config.max_model_len - 1  # vLLM wants room for the one token it generates
        self.max_length = min(max_length or fits, fits)

    def _prompt_logprobs(self, candidates: list[Candidate]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from neat_data.engines.vllm_backend import pack_calls, step_tokens

        # greedy, one token, no detokenising: only the prompt log-probs are wanted; prompt_logprobs=0 returns, per
        # position, exactly the log-prob of the prompt's own token (prefix caching is skipped for such requests)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        # calls packed as the generation backend packs them: each call's tokens within the step budget, so no
        # sequence is prefilled in chunks
        budget = self.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        outputs = []
        for call in pack_calls(((c, step_tokens(len(c.ids), 1)) for c in candidates), budget=budget, max_requests=len(candidates)):
            outputs += self.llm.generate([TokensPrompt(prompt_token_ids=list(c.ids)) for c in call], params, use_tqdm=False)
        sums = []
        for candidate, output in zip(candidates, outputs):
            # prompt_logprobs[t] = {ids[t]: Logprob} = log π(ids[t] | ids[:t]); [0] is None (nothing predicts it)
            positions = output.prompt_logprobs
            sums.append(sum(positions[t][candidate.ids[t]].logprob for t in range(candidate.prompt_length, len(candidate.ids))))
        return sums

    def response_logprobs(self, candidates: list[Candidate]) -> list[float | str]:
        try:
            return list(self._prompt_logprobs(candidates))
        except Exception as error:  # one bad sequence must not fail the chunk: find it, one candidate at a time
            if len(candidates) == 1:
                return [f"vllm: {type(error).__name__}: {error}"]
            return [value for candidate in candidates for value in self.response_logprobs([candidate])]

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None and self._owns_engine:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
