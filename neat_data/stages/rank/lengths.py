"""The kept pairs' lengths in rank (stages/rank/stage.py): the summary's length line and `--balance-length`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data.core.schemas import DROPPED_PAIRS


def response_lengths(responses: pa.Array | pa.ChunkedArray, token_counts: pa.Array | None) -> tuple[np.ndarray, str]:
    """(length of each response, unit): the engine's completion_tokens (`token_counts`, aligned with `responses`) when
    every response has one, else whitespace-separated words for every response (one unit for all: a ratio of tokens
    to words would mean nothing)."""
    if token_counts is not None and len(responses) and token_counts.null_count == 0:
        return token_counts.to_numpy(zero_copy_only=False).astype(np.float64), "tokens"
    words = pc.fill_null(pc.count_substring_regex(responses, r"\S+"), 0)
    return words.to_numpy(zero_copy_only=False).astype(np.float64), "words"


def length_wins(length_chosen: np.ndarray, length_rejected: np.ndarray) -> np.ndarray:
    """Per pair: 1 when the chosen is longer, ½ when equal, 0 when shorter — the mean is the length AUC."""
    return (length_chosen > length_rejected) + 0.5 * (length_chosen == length_rejected)


def length_ratio(length_chosen: np.ndarray, length_rejected: np.ndarray) -> np.ndarray:
    return np.maximum(length_chosen, 1.0) / np.maximum(length_rejected, 1.0)


@dataclass
class PairLengths:
    chosen: np.ndarray
    rejected: np.ndarray
    unit: str  # tokens (completion_tokens of the scored rows) or words

    def keep(self, mask: np.ndarray) -> PairLengths:
        return PairLengths(self.chosen[mask], self.rejected[mask], self.unit)


def pair_lengths(pairs: pa.Table, chosen: np.ndarray, rejected: np.ndarray, tokens: pa.Array | None) -> PairLengths:
    """Each pair's two lengths: completion_tokens (`tokens`: of each flat candidate, `Ranked.tokens`; `chosen` and
    `rejected`: the flat positions of the pairs' sides) when every side has one, else words."""
    n = pairs.num_rows
    texts = pa.chunked_array([*pairs.column("chosen").chunks, *pairs.column("rejected").chunks], pa.string())
    sides = None if tokens is None else tokens.take(pa.array(np.concatenate([chosen, rejected])))
    lengths, unit = response_lengths(texts, sides)
    return PairLengths(lengths[:n], lengths[n:], unit)


def balance_lengths(pairs: pa.Table, lengths: PairLengths, band: float) -> tuple[np.ndarray, pa.Table]:
    """(which pairs are kept, the dropped ones with reason length-band / length-balance): pairs whose length ratio
    exceeds `band` go, then the surplus of the commoner direction (chosen longer vs chosen shorter), smallest score
    gap first (ties by key), so that as many kept pairs have the longer side chosen as rejected."""
    chosen, rejected = lengths.chosen, lengths.rejected
    ratio = length_ratio(chosen, rejected)
    outside = np.maximum(ratio, 1 / ratio) > band
    longer, shorter = (chosen > rejected) & ~outside, (chosen < rejected) & ~outside
    surplus_side = longer if longer.sum() > shorter.sum() else shorter
    surplus = abs(int(longer.sum()) - int(shorter.sum()))
    gap = pc.subtract(pairs.column("score_chosen"), pairs.column("score_rejected")).to_numpy(zero_copy_only=False)
    keys = np.asarray(pairs.column("key_chosen").to_pylist(), dtype=object)
    candidates = np.flatnonzero(surplus_side)
    order = sorted(candidates.tolist(), key=lambda i: (gap[i], keys[i]))[:surplus]
    balanced = np.zeros(pairs.num_rows, dtype=bool)
    balanced[order] = True
    reasons = np.where(outside, "length-band", np.where(balanced, "length-balance", ""))
    drop = reasons != ""
    gone = pairs.filter(pa.array(drop))
    dropped = pa.Table.from_arrays(
        [
            gone.column("prompt_id"),
            gone.column("key_chosen"),
            gone.column("key_rejected"),
            gone.column("score_chosen"),
            gone.column("score_rejected"),
            pa.array(reasons[drop].tolist(), pa.string()),
            gone.column("strategy"),
        ],
        schema=DROPPED_PAIRS,
    )
    return ~drop, dropped


def length_summary(lengths: PairLengths) -> dict[str, Any]:
    if not len(lengths.chosen):
        return {}
    chosen, rejected = lengths.chosen, lengths.rejected
    return {
        "pairs": len(chosen),
        "unit": lengths.unit,
        "share_chosen_longer": float((chosen > rejected).mean()),
        "length_auc": float(length_wins(chosen, rejected).mean()),
        "median_ratio": float(np.median(length_ratio(chosen, rejected))),
    }
