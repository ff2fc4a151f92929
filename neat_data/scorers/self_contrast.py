"""Contrastive self-reward (no reward model): how much more likely a response is under the positive system
prompt than under the negative one, under a fixed reference model (default: the model that generated it).

    s(y | x) = (1/|y|) [ log π_ref(y | pos, x) − log π_ref(y | neg, x) ]

Both renderings come from `neat_data.lm.render.CandidateRenderer` (the neutral prompt with the pair's
system prompt in the model's system mode, generation prompt, the response tokenized on its own, and the
end-of-turn token only when the response finished), the same rendering the trainer uses without the
system prompt; |y| counts the response tokens, the end-of-turn token included when present. Both
log-probs come from `neat_data.lm.logprobs.ResponseLogprobs` — the trainer's module: sums over the
response tokens only, the output head run on response rows only, one chunk of logits at a time — in
length-sorted batches with attention masks (batching does not change scores).
"""

from __future__ import annotations

from neat_data.lm.loading import load_scoring_model
from neat_data.lm.render import Candidate, CandidateRenderer
from neat_data.scorers.base import ScoreItem, ScoreResult


class SelfContrastScorer:
    def __init__(self, model: str, *, batch_size: int = 8, device: str = "auto", max_length: int | None = None, head_chunk: int = 1024):
        from neat_data.lm.logprobs import ResponseLogprobs

        self.name = f"self-contrast:{model}"
        self.tokenizer, self.model, self.device, self.pad_id, longest = load_scoring_model(model, "AutoModelForCausalLM", device)
        self.renderer = CandidateRenderer(self.tokenizer)
        self.logprobs = ResponseLogprobs(self.model, head_chunk=head_chunk)
        self.batch_size = batch_size
        self.max_length = max_length or longest

    def response_logprobs(self, candidates: list[Candidate]) -> list[float]:
        """Σ log π(token) over the response tokens of each candidate (end-of-turn token included when present)."""
        from neat_data.lm.logprobs import candidate_logprobs

        if not candidates:
            return []
        values = candidate_logprobs(
            self.logprobs,
            [c.ids for c in candidates],
            [c.prompt_length for c in candidates],
            self.pad_id,
            batch_size=self.batch_size,
            device=self.device,
        )
        return [total for total, _ in values]

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
        logprobs = self.response_logprobs(candidates)
        for position, (index, response_tokens) in enumerate(owners):
            results[index] = ScoreResult((logprobs[2 * position] - logprobs[2 * position + 1]) / response_tokens)
        return [r for r in results if r is not None]
