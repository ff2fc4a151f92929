"""The kept pairs' lengths in rank (stages/rank.py): the summary's length line and `--balance-length`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data.core.schemas import DROPPED_PAIRS
from neat_data.stages.data_audit_measures import length_ratio, length_wins, response_lengths


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
