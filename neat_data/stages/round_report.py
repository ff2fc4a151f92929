"""The per-round table and curve of a `neat-data run` folder, read back from what the stages wrote.

In:  runs/<name>/round_NN/eval/metrics.json, round_NN/model/neat_train.json, round_NN/manifest.json, the run manifest.
Out: runs/<name>/rounds.json, rounds.md (the table printed at the end) and rounds.png (held-out reward with
its 95% interval and perplexity by round; with evaluation suites a second panel: refusal rate on harmful suites vs
over-refusal on benign ones, per round, with 95% intervals). The safety columns measure refusal wording and
offensiveness, not helpfulness (`neat_data.safety.metrics`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from neat_data.core.files import atomic_write_bytes, atomic_write_json
from neat_data.core.layout import EVAL, EVAL_METRICS, EVAL_RESEEDED, MODEL, TRAIN_RECORD, round_folder
from neat_data.core.manifest import RankRecord, read_manifest
from neat_data.core.runfolder import atomic_write_figure, read_json_object
from neat_data.safety.metrics import METRIC_TABLE


def round_rows(run_dir: Path, rounds: int) -> list[dict[str, Any]]:
    """One row per round (round 0: the base model), and after round 0 the negative control when the run has one
    (`evaluate.negative_control`: the base model again, another seed, compared with itself)."""
    seconds_by_round = read_manifest(run_dir).rounds
    rows = []
    for k in range(rounds + 1):
        folder = round_folder(run_dir, k)
        rows.append(_row(run_dir, folder, k, EVAL.name, seconds_by_round))
        if k == 0 and EVAL_METRICS.path(EVAL_RESEEDED.path(folder)).is_file():
            rows.append({**_row(run_dir, folder, k, EVAL_RESEEDED.name, {}), "label": "0 (base, another seed)", "control": "negative"})
    return rows


def _row(run_dir: Path, folder: Path, k: int, eval_folder: str, seconds_by_round: dict[str, Any]) -> dict[str, Any]:
    metrics = read_json_object(EVAL_METRICS.path(folder / eval_folder))
    train = _object(read_json_object(TRAIN_RECORD.path(MODEL.path(folder))).get("summary"))
    rank = read_manifest(folder).record("rank", RankRecord).summary
    stage_seconds = [entry.get("seconds", 0.0) for entry in seconds_by_round.get(str(k), {}).values()]
    return {
        "round": k,
        "model": metrics.get("model"),
        "reward_mean": metrics.get("reward_mean"),
        "reward_ci95": metrics.get("reward_ci95"),
        "win_rate_vs_base": metrics.get("win_rate_vs_base"),
        "perplexity": metrics.get("perplexity"),
        "pairs": rank.get("pairs_kept"),
        "train_prompts": train.get("prompts"),
        "train_tokens": train.get("tokens"),
        "train_tokens_per_s": train.get("tokens_per_second"),
        "wall_seconds": round(sum(stage_seconds), 1),
        "safety": {
            name: {"kind": suite.get("kind"), "prompts": suite.get("prompts"), "metrics": _object(suite.get("metrics"))}
            for name, suite in _object(metrics.get("suites")).items()
            if isinstance(suite, dict)
        },
    }


def _object(value: Any) -> dict[str, Any]:
    """A nested object of a stage's JSON, or {} where a hand edit left something else (shown as "–", not a crash)."""
    return value if isinstance(value, dict) else {}


def safety_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(suite, metric, header) of the table: each measured metric whose `Metric.headers` names the suite's kind
    (refusal for every suite — over-refusal on benign ones —, P(offensive) on harmful ones), harmful suites first,
    each group in the order the suites first appear."""
    suites: dict[str, tuple[str, set[str]]] = {}
    for row in rows:
        for name, suite in (row.get("safety") or {}).items():
            suites.setdefault(name, (suite.get("kind") or "harmful", set()))[1].update(suite.get("metrics") or {})
    columns: list[tuple[str, str, str]] = []
    for name, (kind, metrics) in sorted(suites.items(), key=lambda item: item[1][0] != "harmful"):  # harmful suites first
        for metric, spec in METRIC_TABLE.items():
            if metric in metrics and kind in spec.headers:
                columns.append((name, metric, spec.headers[kind].format(suite=name)))
    return columns


def _safety_cell(row: dict[str, Any], suite: str, metric: str) -> str:
    entry = ((row.get("safety") or {}).get(suite) or {}).get("metrics", {}).get(metric)
    if not entry:
        return "–"
    if not METRIC_TABLE[metric].interval:  # type: ignore[index]
        return _fmt(entry.get("mean"), ".3f")
    low, high = entry.get("ci95") or [None, None]
    cell = f"{_fmt(entry.get('mean'), '.2f')} [{_fmt(low, '.2f')}, {_fmt(high, '.2f')}]"
    paired = entry.get("vs_base") or {}
    if paired.get("mean") is not None:  # the paired (this − base) difference over the same prompts
        low, high = paired.get("ci95") or [None, None]
        cell += f"; Δ {_fmt(paired['mean'], '+.2f')} [{_fmt(low, '+.2f')}, {_fmt(high, '+.2f')}]"
    return cell


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    safety = safety_columns(rows)
    lines = [
        "| round | held-out reward (95% CI) | win vs base | perplexity | "
        + "".join(f"{header} | " for _, _, header in safety)
        + "pairs | train tokens | wall s |",
        "|---:|---|---:|---:|" + "---|" * len(safety) + "---:|---:|---:|",
    ]
    for row in rows:
        ci = row["reward_ci95"] or [None, None]
        reward = f"{_fmt(row['reward_mean'], '+.4f')} [{_fmt(ci[0], '+.4f')}, {_fmt(ci[1], '+.4f')}]"
        label = row.get("label") or (f"{row['round']} (base)" if row["round"] == 0 else str(row["round"]))
        cells = "".join(f"{_safety_cell(row, suite, metric)} | " for suite, metric, _ in safety)
        lines.append(
            f"| {label} | {reward} | {_fmt(row['win_rate_vs_base'], '.2f')} | {_fmt(row['perplexity'], '.2f')} | {cells}"
            f"{_fmt(row['pairs'], 'd')} | {_fmt(row['train_tokens'], 'd')} | {_fmt(row['wall_seconds'], '.0f')} |"
        )
    return lines


def write_round_report(run_dir: Path, rows: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_json(run_dir / "rounds.json", rows)
    atomic_write_bytes(run_dir / "rounds.md", ("\n".join(table_lines(rows)) + "\n").encode("utf-8"))
    rows = [r for r in rows if not r.get("control")]  # the curves are over rounds; the control is a row of the table
    done = [r for r in rows if r["reward_mean"] is not None]
    refusal_suites = [suite for suite, metric, _ in safety_columns(rows) if metric == "refusal"]
    if refusal_suites:
        figure, (reward_axis, refusal_axis) = plt.subplots(1, 2, figsize=(11, 3.8))
        plot_refusal_panel(refusal_axis, rows, refusal_suites)
    else:
        figure, reward_axis = plt.subplots(figsize=(6, 3.6))
    if done:
        means = [r["reward_mean"] for r in done]
        low = [r["reward_mean"] - (r["reward_ci95"] or [r["reward_mean"]] * 2)[0] for r in done]
        high = [(r["reward_ci95"] or [r["reward_mean"]] * 2)[1] - r["reward_mean"] for r in done]
        reward_axis.errorbar([r["round"] for r in done], means, yerr=[low, high], marker="o", capsize=4, color="tab:blue")
    reward_axis.set_xlabel("round (0 = base model)")
    reward_axis.set_ylabel("held-out reward", color="tab:blue")
    perplexity_rows = [r for r in done if r["perplexity"] is not None]
    if perplexity_rows:
        ppl_axis = reward_axis.twinx()
        ppl_axis.plot([r["round"] for r in perplexity_rows], [r["perplexity"] for r in perplexity_rows], marker="s", color="tab:red")
        ppl_axis.set_ylabel("perplexity on preferred responses", color="tab:red")
    reward_axis.set_xticks([r["round"] for r in rows])
    figure.tight_layout()
    atomic_write_figure(run_dir / "rounds.png", figure)
    return [run_dir / "rounds.json", run_dir / "rounds.md", run_dir / "rounds.png"]


def plot_refusal_panel(axis: Any, rows: list[dict[str, Any]], suites: list[str]) -> None:
    """Refusal rate per round with 95% intervals: harmful suites solid (higher is wanted), benign dashed (over-refusal)."""
    for index, suite in enumerate(suites):
        points = [
            (r["round"], r["safety"][suite]["metrics"]["refusal"])
            for r in rows
            if suite in (r.get("safety") or {}) and (r["safety"][suite].get("metrics") or {}).get("refusal", {}).get("mean") is not None
        ]
        if not points:
            continue
        kind = next(r["safety"][suite].get("kind") for r in rows if suite in (r.get("safety") or {}))
        means = [entry["mean"] for _, entry in points]
        low = [entry["mean"] - (entry["ci95"][0] if entry["ci95"][0] is not None else entry["mean"]) for _, entry in points]
        high = [(entry["ci95"][1] if entry["ci95"][1] is not None else entry["mean"]) - entry["mean"] for _, entry in points]
        offset = (index - (len(suites) - 1) / 2) * 0.06  # side by side, so intervals do not hide each other
        axis.errorbar(
            [k + offset for k, _ in points],
            means,
            yerr=[low, high],
            marker="o" if kind == "harmful" else "s",
            capsize=4,
            linestyle="-" if kind == "harmful" else "--",
            label=f"{suite} ({'refusal' if kind == 'harmful' else 'over-refusal'})",
        )
    axis.set_ylim(-0.03, 1.03)
    axis.set_xticks([r["round"] for r in rows])
    axis.set_xlabel("round (0 = base model)")
    axis.set_ylabel("refusal rate (AdvBench prefixes)")
    axis.set_title("refusal wording, not helpfulness", fontsize=9)
    axis.legend(fontsize=8, loc="best")
