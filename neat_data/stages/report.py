"""Report: PNG plots and a text table of a run's scores and pairs.

In:  `<run>/scored/` and, if ranked, `<run>/ranked/pairs.parquet`. Out: `<run>/report/scores.png` (score
distributions for pos / neg / none), `<run>/report/margins.png` (score gap of kept pairs) and
`<run>/report/summary.txt` (the table printed). Run: `neat-data report runs/demo`.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.files import atomic_write_bytes
from neat_data.core.runfolder import atomic_write_figure

COLOURS = {"pos": "tab:green", "neg": "tab:red", "none": "tab:gray"}


def score_table(scores_by_steering: dict[str, list[float]], pairs: int | None, margins: list[float]) -> list[str]:
    lines = [f"{'steering':<9}{'n':>6}{'mean':>10}{'median':>10}{'std':>10}{'min':>10}{'max':>10}"]
    for steering, values in scores_by_steering.items():
        if not values:
            continue
        std = statistics.pstdev(values) if len(values) > 1 else 0.0
        lines.append(
            f"{steering:<9}{len(values):>6}{statistics.fmean(values):>10.4f}{statistics.median(values):>10.4f}"
            f"{std:>10.4f}{min(values):>10.4f}{max(values):>10.4f}"
        )
    if pairs is not None:
        gap = f", score gap mean {statistics.fmean(margins):.4f}, median {statistics.median(margins):.4f}" if margins else ""
        lines.append(f"pairs kept: {pairs}{gap}")
    return lines


def run_report(run_dir: Path) -> tuple[list[str], list[Path]]:
    """Write the plots and summary; returns (table lines, files written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    if not layout.SCORED.path(run_dir).is_dir():
        raise NeatError("no scored/ in this run folder (run `neat-data score` first)", file=run_dir)
    rows = layout.SCORED.rows(run_dir).read().to_pylist()
    by_steering = {s: [r["score"] for r in rows if r["steering"] == s and r["score_status"] == "ok"] for s in ("pos", "neg", "none")}
    pairs_path = layout.RANKED_PAIRS.path(run_dir)
    margins, pair_count = [], None
    if pairs_path.is_file():
        pairs = pq.read_table(pairs_path, columns=["score_chosen", "score_rejected"]).to_pylist()
        margins = [p["score_chosen"] - p["score_rejected"] for p in pairs]
        pair_count = len(pairs)
    written, report = [], layout.REPORT.path(run_dir)
    figure, axes = plt.subplots(figsize=(7, 4))
    for steering, values in by_steering.items():
        if values:
            axes.hist(values, bins=30, alpha=0.55, label=f"{steering} (n={len(values)})", color=COLOURS[steering])
    axes.set(title=f"Scores by steering — {run_dir.name}", xlabel="score", ylabel="responses")
    axes.legend()
    figure.tight_layout()
    atomic_write_figure(report / "scores.png", figure)
    written.append(report / "scores.png")
    if margins:
        figure, axes = plt.subplots(figsize=(7, 4))
        axes.hist(margins, bins=30, color="tab:blue")
        axes.set(title=f"Score gap of kept pairs (n={len(margins)})", xlabel="score_chosen − score_rejected", ylabel="pairs")
        figure.tight_layout()
        atomic_write_figure(report / "margins.png", figure)
        written.append(report / "margins.png")
    lines = score_table(by_steering, pair_count, margins)
    atomic_write_bytes(report / "summary.txt", ("\n".join(lines) + "\n").encode("utf-8"))
    written.append(report / "summary.txt")
    return lines, written
