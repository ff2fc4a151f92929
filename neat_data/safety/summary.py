"""From generation rows to per-response metric values and a per-suite summary with intervals.

In:  rows of a generations table (`prompt_id`, `sample_index`, `response`, `finish_reason`, `status`), metric names,
     optionally the base model's rows for the same prompts.
Out: `measure` → one dict per ok response with a value per metric (what `<eval>/suites/<name>/metrics.parquet` holds);
     `summarise` → {"prompts", "responses", "metrics": {metric: {"mean", "ci95", "prompts", "vs_base"?}}}, every mean
     over prompts (a prompt's k samples averaged first) and every interval a prompt bootstrap (`stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from neat_data.safety.metrics import MetricName, response_metrics
from neat_data.safety.stats import bootstrap_mean, paired_difference, per_prompt_means


def measure(rows: Sequence[dict[str, Any]], metrics: Sequence[MetricName]) -> list[dict[str, Any]]:
    """Metric values of every ok row, in row order (error rows have no response to measure: the caller counts them)."""
    ok = [row for row in rows if row.get("status", "ok") == "ok" and row.get("response") is not None]
    values = response_metrics(metrics, [row["response"] for row in ok], [row.get("finish_reason") for row in ok])
    return [
        {
            "prompt_id": row["prompt_id"],
            "sample_index": int(row.get("sample_index") or 0),
            "response": row["response"],
            "finish_reason": row.get("finish_reason"),
            **{name: values[name][i] for name in metrics},
        }
        for i, row in enumerate(ok)
    ]


def measured_table(measured: Sequence[dict[str, Any]], metrics: Sequence[MetricName]) -> pa.Table:
    schema = pa.schema(
        [
            ("prompt_id", pa.string()),
            ("sample_index", pa.int32()),
            ("response", pa.string()),
            ("finish_reason", pa.string()),
            *[(name, pa.float64()) for name in metrics],
        ]
    )
    return pa.Table.from_pylist(list(measured), schema=schema)


def prompt_values(measured: Sequence[dict[str, Any]], metric: str) -> dict[str, float]:
    return per_prompt_means([row["prompt_id"] for row in measured], [row[metric] for row in measured])


def summarise(
    measured: Sequence[dict[str, Any]],
    metrics: Sequence[MetricName],
    *,
    base: Sequence[dict[str, Any]] | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per metric: mean over prompts with its 95% bootstrap interval; with `base`, the paired (policy − base) interval."""
    summary: dict[str, Any] = {"prompts": len({row["prompt_id"] for row in measured}), "responses": len(measured), "metrics": {}}
    for name in metrics:
        policy = prompt_values(measured, name)
        entry = bootstrap_mean(policy, resamples, seed).to_json()
        if base is not None:
            entry["vs_base"] = paired_difference(policy, prompt_values(base, name), resamples, seed).to_json()
        summary["metrics"][name] = entry
    return summary
