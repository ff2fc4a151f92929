"""Statistics over prompts with k samples each: the prompt is the unit, never the sample.

In:  per-response values with their prompt ids. Out: `Interval`s (mean, 95% percentile-bootstrap interval, prompts).
    per_prompt_means   mean of a prompt's k samples → one value per prompt
    bootstrap_mean     mean over prompts, interval from resampling *prompts* with replacement
    paired_difference  mean over shared prompts of (policy − base), interval from resampling those prompts
Every resampling draws from `numpy.random.default_rng(seed)` over prompts sorted by id, so a re-run (and another
order of the rows) gives the same numbers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    prompts: int

    def to_json(self) -> dict[str, Any]:
        """NaN (no prompts) becomes null so the file stays strict JSON."""

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {"mean": clean(self.mean), "ci95": [clean(self.low), clean(self.high)], "prompts": self.prompts}


def per_prompt_means(prompt_ids: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """{prompt_id: mean of its samples}."""
    if len(prompt_ids) != len(values):
        raise ValueError(f"{len(prompt_ids)} prompt ids for {len(values)} values")
    groups: dict[str, list[float]] = defaultdict(list)
    for prompt, value in zip(prompt_ids, values):
        groups[prompt].append(float(value))
    return {prompt: sum(group) / len(group) for prompt, group in groups.items()}


def _bootstrap(data: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    means = np.random.default_rng(seed).choice(data, size=(resamples, data.size), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bootstrap_mean(values: Sequence[float] | Mapping[str, float], resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean with its 95% percentile-bootstrap interval. A mapping (prompt → value) is ordered by prompt id first."""
    ordered = [values[key] for key in sorted(values)] if isinstance(values, Mapping) else list(values)
    data = np.asarray(ordered, dtype=np.float64)
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    low, high = _bootstrap(data, resamples, seed)
    return Interval(float(data.mean()), low, high, int(data.size))


def paired_difference(policy: Mapping[str, float], base: Mapping[str, float], resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean over the prompts both have of (policy − base), with a 95% bootstrap interval over those prompts."""
    shared = sorted(set(policy) & set(base))
    return bootstrap_mean([policy[p] - base[p] for p in shared], resamples, seed)


def bootstrap_pooled_mean(values: np.ndarray, clusters: np.ndarray, resamples: int = 1000, seed: int = 0) -> Interval:
    """Mean of `values` (one per item: a pair, a response) with a 95% percentile-bootstrap interval from resampling
    *clusters* (prompts: integer codes 0..P−1, one per item) with replacement: a prompt's items move together, so
    several pairs of one prompt are not counted as independent evidence. The pooled mean (Σ values / Σ items of the
    drawn prompts) is what the item-level figure means; `bootstrap_mean` is the mean of per-prompt means. Works on
    per-prompt sums, in chunks, so 1M prompts × 1000 resamples needs ~100 MB and no Python loop per item."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    clusters = np.asarray(clusters, dtype=np.int64)
    sums = np.bincount(clusters, weights=values)
    counts = np.bincount(clusters).astype(np.float64)
    present = counts > 0
    sums, counts = sums[present], counts[present]
    prompts = sums.size
    mean = float(values.mean())
    if resamples <= 0:
        return Interval(mean, math.nan, math.nan, prompts)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, 10_000_000 // prompts))
    means: list[np.ndarray] = []
    for start in range(0, resamples, chunk):
        drawn = rng.integers(0, prompts, size=(min(chunk, resamples - start), prompts))
        means.append(sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1))
    every = np.concatenate(means)
    return Interval(mean, float(np.percentile(every, 2.5)), float(np.percentile(every, 97.5)), prompts)
