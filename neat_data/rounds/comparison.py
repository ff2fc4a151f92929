"""Variants side by side: every evaluation metric per variant and round, with intervals and the paired difference
against the reference variant (`neat` in pipelines/ablation.yaml).

In:  runs/<name>/<variant>/round_NN/eval/ (metrics.json; scored/ for the reward per prompt; suites/<suite>/metrics.parquet
     for the safety metrics per response) and each variant's manifest (stage seconds; shared stages count 0).
Out: runs/<name>/comparison.json (everything), comparison.md (a table per round), comparison.png (the last round's
     reward and refusal rates per variant, 95% intervals).

A paired difference is over the prompts both variants answered: per prompt the mean over its k samples, then the
mean of (variant − reference) with a 95% bootstrap interval over prompts (`neat_data.safety.stats`), seeded, so a
re-run gives the same table. Reward is the training scorer (not evidence of safety on its own); the safety metrics
measure refusal wording, offensiveness and tone, not helpfulness.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from neat_data.core import layout
from neat_data.core.files import atomic_write_bytes, atomic_write_json
from neat_data.core.manifest import read_manifest
from neat_data.core.runfolder import atomic_write_figure, read_json_object
from neat_data.safety.stats import bootstrap_mean, paired_difference, per_prompt_means
from neat_data.stages.evaluate import neutral_scores

NOT_METRICS = ("prompt_id", "sample_index", "response", "finish_reason")


def prompt_values(eval_dir: Path) -> dict[str, dict[str, float]]:
    """metric → {prompt_id: mean over the prompt's samples}: `reward` (the run's scorer) and `<suite>.<metric>`."""
    values: dict[str, dict[str, float]] = {}
    if layout.SCORED.path(eval_dir).is_dir():
        values["reward"] = neutral_scores(eval_dir)
    for path in sorted(layout.EVAL_SUITES.path(eval_dir).glob("*/metrics.parquet")):
        table = pq.read_table(path).to_pylist()
        for metric in [name for name in pq.read_schema(path).names if name not in NOT_METRICS]:
            rows = [row for row in table if row[metric] is not None]
            values[f"{path.parent.name}.{metric}"] = per_prompt_means([r["prompt_id"] for r in rows], [r[metric] for r in rows])
    return values


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds spent per stage name over all rounds (a stage shared from another variant counts 0)."""
    totals: dict[str, float] = {}
    for stages in read_manifest(run_dir).rounds.values():
        for name, entry in stages.items():
            totals[name.split("-")[0]] = totals.get(name.split("-")[0], 0.0) + float(entry.get("seconds") or 0.0)
    return totals


def compare(parent: Path, variants: list[str], reference: str, rounds: int, *, seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    table: dict[str, Any] = {"reference": reference, "rounds": rounds, "variants": {}}
    for name in variants:
        run_dir = parent / name
        entry: dict[str, Any] = {"stage_seconds": stage_seconds(run_dir), "rounds": {}}
        entry["generation_seconds"] = round(entry["stage_seconds"].get("generate", 0.0), 1)
        for k in range(rounds + 1):
            eval_dir = layout.EVAL.path(layout.round_folder(run_dir, k))
            mine = prompt_values(eval_dir)
            theirs = prompt_values(layout.EVAL.path(layout.round_folder(parent / reference, k))) if name != reference else {}
            metrics = read_json_object(layout.EVAL_METRICS.path(eval_dir))
            row: dict[str, Any] = {
                "win_rate_vs_base": metrics.get("win_rate_vs_base"),
                "perplexity": metrics.get("perplexity"),
                "metrics": {},
            }
            for metric, values in mine.items():
                cell = bootstrap_mean(values, resamples, seed).to_json()
                if metric in theirs:
                    cell["vs_reference"] = paired_difference(values, theirs[metric], resamples, seed).to_json()
                row["metrics"][metric] = cell
            entry["rounds"][str(k)] = row
        table["variants"][name] = entry
    return table


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _cell(entry: dict[str, Any] | None, spec: str, paired: bool) -> str:
    if not entry:
        return "–"
    low, high = entry.get("ci95") or [None, None]
    text = f"{_fmt(entry.get('mean'), spec)} [{_fmt(low, spec)}, {_fmt(high, spec)}]"
    vs = entry.get("vs_reference")
    if paired and vs and vs.get("mean") is not None:
        vl, vh = vs.get("ci95") or [None, None]
        text += f"; Δ {_fmt(vs['mean'], '+' + spec.lstrip('+'))} [{_fmt(vl, '+' + spec.lstrip('+'))}, {_fmt(vh, '+' + spec.lstrip('+'))}]"
    return text


def comparison_lines(table: dict[str, Any]) -> list[str]:
    """Markdown: one table per round, a row per variant; Δ = paired difference against the reference variant."""
    variants = table["variants"]
    metrics = sorted(
        {m for v in variants.values() for r in v["rounds"].values() for m in r["metrics"]},
        key=lambda m: (m != "reward", not m.endswith((".refusal", ".refusal_opening")), m),
    )
    shown = [m for m in metrics if m == "reward" or m.endswith((".refusal", ".refusal_opening", ".offensive"))]
    lines = [
        f"Reference: `{table['reference']}`. Δ = paired difference (variant − reference) over the same prompts, 95% bootstrap "
        "interval. Reward is the training scorer; refusal/offensive measure refusal wording and offensiveness, not helpfulness."
    ]
    for k in range(table["rounds"] + 1):
        lines += [
            "",
            f"**Round {k}**" + (" (the base model, shared by every variant)" if k == 0 else ""),
            "",
            "| variant | " + " | ".join(shown) + " | win vs base | perplexity | generation s | all stages s |",
            "|---|" + "---|" * len(shown) + "---:|---:|---:|---:|",
        ]
        for name, entry in variants.items():
            row = entry["rounds"].get(str(k), {})
            if k == 0 and name != table["reference"]:
                continue
            cells = [_cell(row.get("metrics", {}).get(m), "+.4f" if m == "reward" else ".2f", k > 0) for m in shown]
            lines.append(
                f"| {name if k else 'base'} | " + " | ".join(cells) + f" | {_fmt(row.get('win_rate_vs_base'), '.2f')} | "
                f"{_fmt(row.get('perplexity'), '.2f')} | {_fmt(entry['generation_seconds'], '.0f') if k else '–'} | "
                f"{_fmt(sum(entry['stage_seconds'].values()), '.0f') if k else '–'} |"
            )
    return lines


def write_comparison(parent: Path, recipe: Any, results: dict[str, Any]) -> list[Path]:
    """comparison.{json,md,png} in the parent run folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(recipe.variants)
    reference = recipe.reference or variants[0]
    table = compare(parent, variants, reference, recipe.rounds, seed=recipe.seed)
    atomic_write_json(parent / "comparison.json", table)
    atomic_write_bytes(parent / "comparison.md", ("\n".join(comparison_lines(table)) + "\n").encode("utf-8"))
    last = str(recipe.rounds)
    panels = ["reward"] + sorted(
        {m for v in table["variants"].values() for m in v["rounds"].get(last, {}).get("metrics", {}) if m.endswith(".refusal")}
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], panels):
        names: list[str] = []
        means: list[float] = []
        errors: list[list[float]] = [[], []]
        for name, entry in table["variants"].items():
            cell = entry["rounds"].get(last, {}).get("metrics", {}).get(metric)
            if not cell or cell.get("mean") is None:
                continue
            low, high = cell["ci95"]
            names.append(name)
            means.append(cell["mean"])
            errors[0].append(cell["mean"] - low)
            errors[1].append(high - cell["mean"])
        axis.bar(range(len(names)), means, yerr=errors, capsize=4, color="tab:blue")
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        axis.set_title(f"{metric} (round {last})", fontsize=9)
    figure.tight_layout()
    atomic_write_figure(parent / "comparison.png", figure)
    return [parent / "comparison.json", parent / "comparison.md", parent / "comparison.png"]
