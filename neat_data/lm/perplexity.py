"""Perplexity of a policy on given responses: the evaluate stage's measure, in the foundation layer so that it needs
only torch + transformers (scripts/gpu_check.sh runs it on a bare CUDA machine). Importing it imports no torch."""

from __future__ import annotations

import math
from typing import Any


def perplexity(model_path: str, rows: list[dict[str, Any]], *, max_length: int, device: str, batch_prompts: int = 8) -> tuple[float, int]:
    """exp(mean NLL per response token) of the policy on `rows`, and the number of tokens.

    Each response is rendered as the trainer renders a candidate (`neat_data.lm.render`: neutral prompt,
    chat template, response, end-of-turn token when it finished — a row's optional `finish_reason` list, as in ranked lists;
    none means finished) and scored by the same `ResponseLogprobs`; responses are cut to `max_length`."""
    from neat_data.lm.loading import load_policy, pad_id_of, pick_device
    from neat_data.lm.logprobs import ResponseLogprobs, candidate_logprobs
    from neat_data.lm.render import CandidateRenderer

    tokenizer, model, _ = load_policy(model_path, pick_device(device))
    renderer = CandidateRenderer(tokenizer)
    sequences, starts = [], []
    for row in rows:
        finish = row.get("finish_reason") or [None] * len(row["responses"])
        for response, reason in zip(row["responses"], finish):
            candidate = renderer.render(row["prompt"], response, reason)
            if candidate.prompt_length < max_length:
                sequences.append(candidate.ids[:max_length])
                starts.append(candidate.prompt_length)
    values = candidate_logprobs(
        ResponseLogprobs(model.eval()), sequences, starts, pad_id_of(tokenizer), batch_size=batch_prompts, device=model.device
    )
    total, count = sum(v for v, _ in values), sum(n for _, n in values)
    return (math.exp(-total / count) if count else math.nan), count
