"""Trainer input: the `ranked` export → tokenized candidate sequences → padded prompt × candidate batches.

In:  `<run>/export/ranked/train.parquet` (prompt, prompt_id, responses best first, scores, steering).
Out: `RankedExample`s (token ids of the neutral prompt through the policy's own chat template, then the
response and the end-of-turn token; the steering system prompt is *not* in the sequence: context
distillation) and `Batch`es of B prompts × C candidate slots.

A sequence longer than `max_length` loses the end of its response; a prompt that leaves no room for a
response token is skipped and counted. Positions: the token at index t+1 is predicted at t, so a
response occupying [s, e) is scored at positions [s-1, e-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from neat_data.errors import NeatError
from neat_data.scorers.torch_common import pad_batch

RANKED_COLUMNS = ("prompt", "prompt_id", "responses", "scores")


@dataclass(frozen=True)
class RankedExample:
    prompt_id: str
    sequences: tuple[tuple[int, ...], ...]  # prompt + response (+ end token), one per candidate
    prompt_lengths: tuple[int, ...]
    rewards: tuple[float, ...]


@dataclass
class DataStats:
    prompts: int = 0
    candidates: int = 0
    skipped_prompts: int = 0  # prompt alone fills max_length
    truncated_responses: int = 0
    dropped_candidates: int = 0  # beyond max_candidates
    tokens: int = 0
    response_tokens: int = 0


def find_ranked_export(source: Path) -> Path:
    """A run folder (→ its export/ranked/train.parquet), an export folder, or a Parquet file."""
    for candidate in (source, source / "train.parquet", source / "export" / "ranked" / "train.parquet"):
        if candidate.is_file():
            return candidate
    raise NeatError("no ranked export found (run `neat-data export RUN --format ranked` first)", file=source)


def read_ranked_rows(path: Path) -> list[dict[str, Any]]:
    table = pq.read_table(path)
    missing = [name for name in RANKED_COLUMNS if name not in table.column_names]
    if missing:
        raise NeatError(f"not a ranked export: missing {missing}", file=path, field=missing[0])
    rows = table.select(list(RANKED_COLUMNS)).to_pylist()
    for number, row in enumerate(rows):
        if len(row["responses"] or []) != len(row["scores"] or []):
            raise NeatError("responses and scores differ in length", file=path, row=number, field="scores")
        if any(score is None for score in row["scores"]):
            raise NeatError("a candidate has no score", file=path, row=number, field="scores")
    return rows


def spread_indices(count: int, keep: int | None) -> list[int]:
    """Which of `count` ranked candidates to keep: all, or `keep` spread from best to worst (both kept)."""
    if keep is None or count <= keep:
        return list(range(count))
    return sorted({int(round(x)) for x in np.linspace(0, count - 1, keep)})


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def tokenize_ranked(rows: list[dict[str, Any]], tokenizer: Any, *, max_length: int, max_candidates: int | None = None) -> tuple[list[RankedExample], DataStats]:
    """Tokenize every prompt's candidates (neutral prompt, policy chat template, response + end-of-turn)."""
    end = tokenizer.eos_token_id
    stats = DataStats()
    examples = []
    for row in rows:
        keep = spread_indices(len(row["responses"]), max_candidates)
        stats.dropped_candidates += len(row["responses"]) - len(keep)
        prompt_ids = chat_prompt_ids(tokenizer, row["prompt"])
        if len(prompt_ids) >= max_length or not keep:
            stats.skipped_prompts += 1
            continue
        sequences, lengths = [], []
        for index in keep:
            response_ids = tokenizer(row["responses"][index], add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
            room = max_length - len(prompt_ids)
            if len(response_ids) > room:
                response_ids = response_ids[:room]
                stats.truncated_responses += 1
            sequences.append(tuple(prompt_ids + response_ids))
            lengths.append(len(prompt_ids))
            stats.tokens += len(prompt_ids) + len(response_ids)
            stats.response_tokens += len(response_ids)
        examples.append(RankedExample(row["prompt_id"], tuple(sequences), tuple(lengths), tuple(float(row["scores"][i]) for i in keep)))
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
    tokens: int  # real tokens in the batch (prompt + response)


def make_batch(examples: list[RankedExample], pad_id: int) -> Batch:
    import torch

    count = max(len(example.sequences) for example in examples)
    sequences = [seq for example in examples for seq in example.sequences]
    starts = [length for example in examples for length in example.prompt_lengths]
    slots = [b * count + c for b, example in enumerate(examples) for c in range(len(example.sequences))]
    input_ids, attention_mask = pad_batch([list(seq) for seq in sequences], pad_id, "cpu")
    width = input_ids.shape[1]
    positions = torch.arange(width - 1).unsqueeze(0)
    start = torch.tensor(starts).unsqueeze(1) - 1
    response_mask = (positions >= start) & attention_mask[:, 1:].bool()
    rewards = torch.zeros((len(examples), count), dtype=torch.float32)
    candidate_mask = torch.zeros((len(examples), count), dtype=torch.float32)
    for b, example in enumerate(examples):
        rewards[b, : len(example.rewards)] = torch.tensor(example.rewards)
        candidate_mask[b, : len(example.rewards)] = 1.0
    return Batch(input_ids, attention_mask, response_mask, torch.tensor(slots), rewards, candidate_mask, int(attention_mask.sum()))


def epoch_batches(examples: list[RankedExample], prompts_per_batch: int, seed: int, epoch: int) -> list[list[RankedExample]]:
    """Shuffled (seed, epoch) prompt groups of `prompts_per_batch`; the last group may be smaller."""
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    return [[examples[i] for i in order[start:start + prompts_per_batch]] for start in range(0, len(examples), prompts_per_batch)]


def rank_share(batches: list[Any], rank: int, world: int) -> list[Any]:
    """This rank's batches; every rank gets the same count (the shortest are topped up by wrapping round,
    like torch's DistributedSampler), so DDP ranks never wait on a step another rank does not take."""
    if world == 1:
        return batches
    per_rank = -(-len(batches) // world)
    return [batches[(rank + world * step) % len(batches)] for step in range(per_rank)]


def load_examples(source: Path, tokenizer: Any, *, max_length: int, max_candidates: int | None) -> tuple[Path, list[RankedExample], DataStats]:
    path = find_ranked_export(Path(source))
    examples, stats = tokenize_ranked(read_ranked_rows(path), tokenizer, max_length=max_length, max_candidates=max_candidates)
    if not examples:
        raise NeatError("no trainable prompt in the ranked export (empty, or every prompt longer than max_length)", file=path)
    return path, examples, stats
