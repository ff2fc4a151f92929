"""The per-round table and curve of a `neat-data run` folder, read back from what the stages wrote.

In:  runs/<name>/round_NN/eval/metrics.json, round_NN/model/neat_train.json, round_NN/manifest.json, the run manifest.
Out: runs/<name>/rounds.json, rounds.md (the table printed at the end) and rounds.png (held-out reward with
its 95% interval and perplexity by round).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from neat_data.runfolder import atomic_write_bytes, atomic_write_json, read_manifest


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def round_rows(run_dir: Path, rounds: int) -> list[dict[str, Any]]:
    seconds_by_round = read_manifest(run_dir).get("rounds", {})
    rows = []
    for k in range(rounds + 1):
        folder = run_dir / f"round_{k:02d}"
        metrics = _read_json(folder / "eval" / "metrics.json")
        train = _read_json(folder / "model" / "neat_train.json").get("summary", {})
        rank = read_manifest(folder).get("stages", {}).get("rank", {}).get("summary", {})
        stage_seconds = [entry.get("seconds", 0.0) for entry in seconds_by_round.get(str(k), {}).values()]
        rows.append({
            "round": k, "model": metrics.get("model"), "reward_mean": metrics.get("reward_mean"), "reward_ci95": metrics.get("reward_ci95"),
            "win_rate_vs_base": metrics.get("win_rate_vs_base"), "perplexity": metrics.get("perplexity"),
            "pairs": rank.get("pairs_kept"), "train_prompts": train.get("prompts"), "train_tokens": train.get("tokens"),
            "train_tokens_per_s": train.get("tokens_per_second"), "wall_seconds": round(sum(stage_seconds), 1),
        })
    return rows


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| round | held-out reward (95% CI) | win vs base | perplexity | pairs | train tokens | wall s |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        ci = row["reward_ci95"] or [None, None]
        reward = f"{_fmt(row['reward_mean'], '+.4f')} [{_fmt(ci[0], '+.4f')}, {_fmt(ci[1], '+.4f')}]"
        label = f"{row['round']} (base)" if row["round"] == 0 else str(row["round"])
        lines.append(f"| {label} | {reward} | {_fmt(row['win_rate_vs_base'], '.2f')} | {_fmt(row['perplexity'], '.2f')} | "
                     f"{_fmt(row['pairs'], 'd')} | {_fmt(row['train_tokens'], 'd')} | {_fmt(row['wall_seconds'], '.0f')} |")
    return lines


def write_round_report(run_dir: Path, rows: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_json(run_dir / "rounds.json", rows)
    atomic_write_bytes(run_dir / "rounds.md", ("\n".join(table_lines(rows)) + "\n").encode("utf-8"))
    done = [r for r in rows if r["reward_mean"] is not None]
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
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": "neat-data"})
    plt.close(figure)
    atomic_write_bytes(run_dir / "rounds.png", buffer.getvalue())
    return [run_dir / "rounds.json", run_dir / "rounds.md", run_dir / "rounds.png"]
