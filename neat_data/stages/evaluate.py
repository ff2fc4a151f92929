"""Evaluate stage: the paper's protocol in small, on held-out prompts with the neutral prompt only.

In:  a policy, held-out prompts, the run's scorer; optionally the base model's evaluation folder and a set
     of held-out preferred responses.
Out: `<eval>/generations/`, `<eval>/scored/` (ordinary run-folder tables) and `<eval>/metrics.json`:
     - reward: mean score of the policy's responses with a 95% bootstrap confidence interval;
     - win_rate_vs_base: share of held-out prompts where the policy's response scores above the base
       model's (ties count one half), when a base evaluation is given;
     - perplexity of the policy on the preferred responses (exp of the mean NLL per response token,
       neutral prompt through the policy's chat template), when they are given.
Run: `neat-data evaluate EVAL_DIR --model POLICY --heldout FILE [--base-eval DIR] [--preferred DIR_OR_FILE]`.

Generation and scoring reuse the generate and score stages (so they resume the same way); the engine is
closed before the scorer and the perplexity model load. The preferred set defaults (in `neat-data run`)
to the base model's positive-prompt responses on the held-out prompts, generated once in round 0.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from neat_data.errors import NeatError
from neat_data.runfolder import atomic_write_json
from neat_data.stages.generate import GenerateConfig, run_generate
from neat_data.stages.score import ScoreConfig, run_score


class EvaluateConfig(BaseModel):
    """Generation (neutral responses; `generate.num_pos` > 0 also samples the preferred set), scoring, metrics."""

    model_config = ConfigDict(extra="forbid")

    generate: GenerateConfig = Field(description="Held-out generation: prompts, policy, sampling, backend; out = the eval folder.")
    score: ScoreConfig = Field(description="The run's scorer; run = the eval folder.")
    base_eval: Path | None = Field(None, description="The base model's eval folder: win rate against its responses.")
    preferred: Path | None = Field(None, description="Preferred responses for perplexity: an eval/run folder (its positive-prompt rows) or a Parquet/JSONL with prompt + response.")
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples for the reward confidence interval.")
    max_length: int = Field(2048, ge=8, description="Longest sequence in the perplexity pass.")
    device: str = Field("auto", description="auto | cpu | cuda: perplexity pass.")


def bootstrap_mean(values: list[float], resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): 95% percentile bootstrap interval of the mean."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (math.nan, math.nan, math.nan)
    means = np.random.default_rng(seed).choice(data, size=(resamples, data.size), replace=True).mean(axis=1)
    return float(data.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def neutral_scores(eval_dir: Path) -> dict[str, float]:
    """prompt_id → score of the first unsteered response (ok rows only)."""
    rows = pq.read_table(eval_dir / "scored", columns=["prompt_id", "steering", "sample_index", "score", "score_status"]).to_pylist()
    return {r["prompt_id"]: r["score"] for r in rows if r["steering"] == "none" and r["sample_index"] == 0 and r["score_status"] == "ok"}


def win_rate(policy: dict[str, float], base: dict[str, float]) -> tuple[float, int]:
    shared = sorted(set(policy) & set(base))
    if not shared:
        return math.nan, 0
    wins = sum(1.0 if policy[p] > base[p] else 0.5 if policy[p] == base[p] else 0.0 for p in shared)
    return wins / len(shared), len(shared)


def load_preferred(source: Path) -> list[dict[str, Any]]:
    """Rows {prompt, responses: [text], scores: [0]} for the perplexity pass."""
    if source.is_dir():
        table_dir = source / "scored" if (source / "scored").is_dir() else source / "generations"
        if not table_dir.is_dir():
            raise NeatError("no generations/ or scored/ to take preferred responses from", file=source)
        rows = [r for r in pq.read_table(table_dir).to_pylist() if r["steering"] == "pos" and r["status"] == "ok" and r["sample_index"] == 0]
        pairs = [(r["prompt"], r["response"]) for r in rows]
    elif source.suffix == ".parquet":
        pairs = [(r["prompt"], r["response"]) for r in pq.read_table(source, columns=["prompt", "response"]).to_pylist()]
    else:
        import json

        pairs = []
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                row = json.loads(line)
                if "prompt" not in row or "response" not in row:
                    raise NeatError("needs 'prompt' (messages) and 'response'", file=source, row=number, field="response")
                pairs.append((row["prompt"], row["response"]))
    return [{"prompt": prompt, "prompt_id": str(i), "responses": [response], "scores": [0.0]} for i, (prompt, response) in enumerate(pairs) if response]


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
    values = candidate_logprobs(ResponseLogprobs(model.eval()), sequences, starts, pad_id_of(tokenizer), batch_size=batch_prompts,
                                device=model.device)
    total, count = sum(v for v, _ in values), sum(n for _, n in values)
    return (math.exp(-total / count) if count else math.nan), count


def run_evaluate(config: EvaluateConfig, *, argv: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    from neat_data.models import resolve_model

    started = time.time()
    eval_dir = Path(config.generate.out)
    if Path(config.score.run) != eval_dir:
        raise NeatError("score.run must be the eval folder (generate.out)", field="score.run")
    run_generate(config.generate, progress=progress, argv=argv)
    run_score(config.score, progress=progress, argv=argv)
    scores = neutral_scores(eval_dir)
    mean, low, high = bootstrap_mean(list(scores.values()), config.bootstrap, seed=config.generate.sampling.seed)
    metrics: dict[str, Any] = {"model": config.generate.model, "prompts": len(scores), "reward_mean": mean, "reward_ci95": [low, high],
                               "scorer": config.score.scorer, "scorer_model": config.score.model}
    if config.base_eval is not None:
        metrics["win_rate_vs_base"], metrics["win_rate_prompts"] = win_rate(scores, neutral_scores(config.base_eval))
    if config.preferred is not None:
        preferred = load_preferred(config.preferred)
        metrics["perplexity"], metrics["perplexity_tokens"] = perplexity(resolve_model(config.generate.model), preferred,
                                                                        max_length=config.max_length, device=config.device)
    metrics["seconds"] = round(time.time() - started, 2)
    atomic_write_json(eval_dir / "metrics.json", {**metrics, "config": config.model_dump(mode="json"), "command": argv})
    return metrics
