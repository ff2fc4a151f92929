"""Trainer input: the `ranked` export → tokenized candidate sequences → padded prompt × candidate batches.

In:  `<run>/export/ranked/train.parquet` (prompt, prompt_id, responses best first, scores; optional steering
     and finish_reason lists beside responses).
Out: `RankedExample`s and `Batch`es of B prompts × C candidate slots.

Every candidate is rendered by `neat_data.lm.render.CandidateRenderer` — the rendering self-contrast scored
it with, minus the steering system prompt (context distillation): the neutral prompt through the policy's
own chat template, the response, and the end-of-turn token only when the response finished
(finish_reason "stop"). A truncated response (finish_reason "length") gets no end token, so the policy is
not taught to stop mid-sentence. A ranked file without a finish_reason column, or a null in it, is taken
as finished responses (the rendering every candidate got before finish reasons travelled).

Which candidates are tokenized depends on the loss: RRHF/PRO all of them (or `max_candidates` spread from
best to worst); DPO best-vs-worst the best and the worst; DPO pos-vs-neg the positive- and negative-prompt
ones; SFT the best alone. A prompt that cannot give DPO a pair (one candidate, all scores equal, no
positive or no negative) is left out and counted.

A sequence longer than `max_length` loses the end of its response (its end token first); a prompt that
leaves no room for a response token is skipped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.lm.render import CandidateRenderer
from neat_data.train.loss import LOSSES, STEERING_CODES

RANKED_COLUMNS = ("prompt", "prompt_id", "responses", "scores")
OPTIONAL_COLUMNS = ("steering", "finish_reason")


@dataclass(frozen=True)
class RankedExample:
    prompt_id: str
    sequences: tuple[tuple[int, ...], ...]  # prompt + response (+ end token when it finished), one per candidate
    prompt_lengths: tuple[int, ...]
    rewards: tuple[float, ...]
    steering: tuple[int, ...] = ()  # STEERING_CODES: +1 pos, −1 neg, 0 other (empty: unknown)
    reference: tuple[float, ...] | None = None  # Σ log π_ref per candidate (DPO), filled by train.reference


@dataclass
class DataStats:
    prompts: int = 0
    candidates: int = 0
    skipped_prompts: int = 0  # prompt alone fills max_length
    no_pair_prompts: int = 0  # DPO: the prompt's candidates give no pair
    truncated_responses: int = 0  # cut to fit max_length
    unfinished_candidates: int = 0  # finish_reason other than "stop" (e.g. "length"): no end token
    unknown_finish_candidates: int = 0  # no finish reason: taken as finished
    dropped_candidates: int = 0  # not used by the loss, or beyond max_candidates
    tokens: int = 0
    response_tokens: int = 0


def read_ranked_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ranked Parquet, checked: every problem names the file, the row and the field."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:  # truncated or not Parquet at all
        raise NeatError(f"not a readable Parquet file ({type(error).__name__}: {str(error)[:200]})", file=path) from None
    missing = [name for name in RANKED_COLUMNS if name not in table.column_names]
    if missing:
        raise NeatError(f"not a ranked export: missing {missing}", file=path, field=missing[0])
    names = list(RANKED_COLUMNS) + [name for name in OPTIONAL_COLUMNS if name in table.column_names]
    rows = table.select(names).to_pylist()
    for number, row in enumerate(rows):
        responses = row["responses"] or []
        if not isinstance(row["prompt"], list) or not row["prompt"]:
            raise NeatError("prompt must be a non-empty list of messages", file=path, row=number, field="prompt")
        if any(not isinstance(text, str) for text in responses):
            raise NeatError("a candidate has no response text", file=path, row=number, field="responses")
        for name in ("scores", *[n for n in OPTIONAL_COLUMNS if n in row]):
            values = row[name] or []
            if len(values) != len(responses):
                raise NeatError(f"responses and {name} differ in length", file=path, row=number, field=name)
        if any(score is None or not isinstance(score, (int, float)) or not math.isfinite(score) for score in row["scores"] or []):
            raise NeatError("a candidate has no finite score", file=path, row=number, field="scores")
        row["responses"] = responses
    return rows


def spread_indices(count: int, keep: int | None) -> list[int]:
    """Which of `count` ranked candidates to keep: all, or `keep` spread from best to worst (both kept)."""
    if keep is None or count <= keep:
        return list(range(count))
    return sorted({int(round(x)) for x in np.linspace(0, count - 1, keep)})


def candidate_indices(row: dict[str, Any], *, loss: str, dpo_pairs: str, max_candidates: int | None) -> list[int]:
    """The candidates of one ranked row the loss reads (see the module docstring); [] when none."""
    scores = row["scores"]
    if not scores:
        return []
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # first of the highest
    choice = LOSSES[loss].candidates
    if choice == "best":
        return [best]
    if choice == "pair" and dpo_pairs == "best-vs-worst":
        worst = min(range(len(scores)), key=lambda i: (scores[i], -i))  # last of the lowest
        return [best, worst] if scores[best] > scores[worst] else []
    if choice == "pair":  # pos-vs-neg
        steering = row.get("steering") or [None] * len(scores)
        positive = [i for i, s in enumerate(steering) if s == "pos"]
        negative = [i for i, s in enumerate(steering) if s == "neg"]
        return sorted(positive + negative) if positive and negative else []
    return spread_indices(len(scores), max_candidates)


def tokenize_ranked(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    *,
    max_length: int,
    max_candidates: int | None = None,
    loss: str = "rrhf",
    dpo_pairs: str = "best-vs-worst",
) -> tuple[list[RankedExample], DataStats]:
    """Tokenize the candidates each prompt's loss reads (neutral prompt, policy chat template, response, end
    of turn when finished)."""
    renderer = CandidateRenderer(tokenizer)
    stats = DataStats()
    examples = []
    for row in rows:
        keep = candidate_indices(row, loss=loss, dpo_pairs=dpo_pairs, max_candidates=max_candidates)
        stats.dropped_candidates += len(row["responses"]) - len(keep)
        if not keep:
            stats.no_pair_prompts += 1 if row["responses"] else 0
            stats.skipped_prompts += 0 if row["responses"] else 1
            continue
        prompt_ids = renderer.prompt_ids(row["prompt"])
        if len(prompt_ids) >= max_length:
            stats.skipped_prompts += 1
            continue
        finish = row.get("finish_reason") or [None] * len(row["responses"])
        steering = row.get("steering") or [None] * len(row["responses"])
        sequences, lengths = [], []
        for index in keep:
            candidate = renderer.render(row["prompt"], row["responses"][index], finish[index])
            stats.unfinished_candidates += not candidate.ends_turn
            stats.unknown_finish_candidates += finish[index] is None
            ids = candidate.ids
            if len(ids) > max_length:
                ids = ids[:max_length]
                stats.truncated_responses += 1
            sequences.append(ids)
            lengths.append(candidate.prompt_length)
            stats.tokens += len(ids)
            stats.response_tokens += len(ids) - candidate.prompt_length
        examples.append(
            RankedExample(
                row["prompt_id"],
                tuple(sequences),
                tuple(lengths),
                tuple(float(row["scores"][i]) for i in keep),
                tuple(STEERING_CODES.get(steering[i], 0) for i in keep),
            )
        )
        stats.prompts += 1
        stats.candidates += len(keep)
    return examples, stats


@dataclass
class Batch:
    """B prompts × C candidate slots; only real candidates are sequences (N = candidate_mask.sum())."""

    input_ids: Any  # [N, T] long, right-padded
    attention_mask: Any  # [N, T]
    response_mask: Any  # [N, T-1] bool: position t predicts a response token t+1
    slots: Any  # [N] long: flat slot index b*C + c of each sequence
    rewards: Any  # [B, C] float (0 in padded slots)
    candidate_mask: Any  # [B, C] float
    steering: Any  # [B, C] long: +1 pos, −1 neg, 0 other or padded
    reference_sums: Any  # [B, C] float Σ log π_ref (DPO), or None
    tokens: int  # real tokens in the batch (prompt + response)


def make_batch(examples: list[RankedExample], pad_id: int) -> Batch:
    import torch

    from neat_data.lm.logprobs import response_batch

    count = max(len(example.sequences) for example in examples)
    sequences = [seq for example in examples for seq in example.sequences]
    starts = [length for example in examples for length in example.prompt_lengths]
    slots = [b * count + c for b, example in enumerate(examples) for c in range(len(example.sequences))]
    input_ids, attention_mask, response_mask = response_batch(sequences, starts, pad_id)
    rewards = torch.zeros((len(examples), count), dtype=torch.float32)
    candidate_mask = torch.zeros((len(examples), count), dtype=torch.float32)
    steering = torch.zeros((len(examples), count), dtype=torch.long)
    with_reference = all(example.reference is not None for example in examples)
    reference = torch.zeros((len(examples), count), dtype=torch.float32) if with_reference else None
    for b, example in enumerate(examples):
        width = len(example.rewards)
        rewards[b, :width] = torch.tensor(example.rewards)
        candidate_mask[b, :width] = 1.0
        if example.steering:
            steering[b, :width] = torch.tensor(example.steering)
        if reference is not None:
            reference[b, :width] = torch.tensor(example.reference)
    return Batch(
        input_ids,
        attention_mask,
        response_mask,
        torch.tensor(slots),
        rewards,
        candidate_mask,
        steering,
        reference,
        int(attention_mask.sum()),
    )


def epoch_batches(examples: list[RankedExample], prompts_per_batch: int, seed: int, epoch: int) -> list[list[RankedExample]]:
    """Shuffled (seed, epoch) prompt groups of `prompts_per_batch`; the last group may be smaller."""
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    return [[examples[i] for i in order[start : start + prompts_per_batch]] for start in range(0, len(examples), prompts_per_batch)]


def rank_share(batches: list[Any], rank: int, world: int) -> list[Any]:
    """This rank's batches; every rank gets the same count (the shortest are topped up by wrapping round,
    like torch's DistributedSampler), so DDP ranks never wait on a step another rank does not take."""
    if world == 1:
        return batches
    per_rank = -(-len(batches) // world)
    return [batches[(rank + world * step) % len(batches)] for step in range(per_rank)]


def load_examples(
    source: Path, tokenizer: Any, *, max_length: int, max_candidates: int | None, loss: str = "rrhf", dpo_pairs: str = "best-vs-worst"
) -> tuple[Path, list[RankedExample], DataStats]:
    path = layout.ranked_input(Path(source))  # a round's plan names the file; the command also takes a folder
    if not path.is_file():
        raise NeatError("no ranked export found (run `neat-data export RUN --format ranked` first)", file=source)
    rows = read_ranked_rows(path)
    if LOSSES[loss].candidates == "pair" and dpo_pairs == "pos-vs-neg" and rows and "steering" not in rows[0]:
        raise NeatError("dpo_pairs pos-vs-neg needs a steering column", file=path, field="steering")
    examples, stats = tokenize_ranked(rows, tokenizer, max_length=max_length, max_candidates=max_candidates, loss=loss, dpo_pairs=dpo_pairs)
    if not examples:
        raise NeatError(
            f"no trainable prompt in the ranked export for loss {loss} (empty, every prompt longer than max_length, or no pair)", file=path
        )
    return path, examples, stats
