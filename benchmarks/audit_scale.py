"""`neat-data audit` on 1M pairs, side by side with reading those pairs alone. Target: the audit ≤ 2 min.

Data: benchmarks/rank_export.py's synthetic scored table (5 candidates per prompt: pos, pos, neg, neg, none; random
40–200 character texts from a small vocabulary, random scores, completion_tokens 10–60), ranked once with
`pos-vs-neg` (2 × 2 = 4 pairs per prompt), so 250,000 prompts give 1,000,000 pairs. Then, `--repeats` times, the
order alternating, each side in a fresh subprocess (timed after its imports):

  A  read:   pq.read_table of ranked/pairs.parquet and ranked/lists.parquet
  B  audit:  run_data_audit(DataAuditConfig(run)) — reads lists, pairs, dropped and scored/ (3 columns), every
             measure (the per-text ones on the default 5,000-prompt sample), writes audit.json / .md / .png

Prints the median seconds of A and B, B/A, B's per-measure seconds (audit.json's `seconds`) and peak RSS.

    .venv/bin/python benchmarks/audit_scale.py               # 1,000,000 pairs, 3 repeats
    .venv/bin/python benchmarks/audit_scale.py --pairs 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(run: Path, pairs: int) -> dict:
    sys.path.insert(0, str(HERE.parent))
    from rank_export import build_scored

    from neat_data.stages.rank.stage import RankConfig, run_rank

    started = time.perf_counter()
    table = build_scored(rows=(pairs // 4) * 5)
    import pyarrow.parquet as pq

    (run / "scored").mkdir(parents=True)
    pq.write_table(table, run / "scored" / "part-000000.parquet")
    built = time.perf_counter()
    summary = run_rank(RankConfig(run=run, pairs="pos-vs-neg"))
    return {"rows": table.num_rows, "pairs": summary.pairs_kept, "build_s": built - started, "rank_s": time.perf_counter() - built}


def side(name: str, run: Path) -> dict:
    if name == "read":
        import pyarrow.parquet as pq

        pq.read_table(run / "ranked" / "dropped.parquet")  # warm-up: lazy imports of pyarrow.dataset
        started = time.perf_counter()
        pairs = pq.read_table(run / "ranked" / "pairs.parquet")
        lists = pq.read_table(run / "ranked" / "lists.parquet")
        return {"seconds": time.perf_counter() - started, "rows": pairs.num_rows + lists.num_rows, "peak_rss": peak_rss_mib()}
    import matplotlib.pyplot  # noqa: F401  (import time is not the audit's)
    import sklearn.linear_model  # noqa: F401

    from neat_data.stages.audit.stage import DataAuditConfig, run_data_audit

    started = time.perf_counter()
    report = run_data_audit(DataAuditConfig(run=run))
    return {"seconds": time.perf_counter() - started, "steps": report.report["seconds"], "peak_rss": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", choices=["read", "audit"], help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.run)))
        return
    with tempfile.TemporaryDirectory() as work:
        run = Path(work) / "run"
        prepared = prepare(run, args.pairs)
        print(
            f"data: {prepared['rows']:,} scored rows → {prepared['pairs']:,} pairs (built {prepared['build_s']:.0f} s, ranked {prepared['rank_s']:.0f} s)"
        )
        results: dict[str, list[dict]] = {"read": [], "audit": []}
        for repeat in range(args.repeats):
            for name in ("read", "audit") if repeat % 2 == 0 else ("audit", "read"):
                out = subprocess.run(
                    [sys.executable, str(HERE), "--side", name, "--run", str(run)], check=True, capture_output=True, text=True, cwd=ROOT
                )
                results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        read = statistics.median(r["seconds"] for r in results["read"])
        audit = statistics.median(r["seconds"] for r in results["audit"])
        middle = sorted(results["audit"], key=lambda r: r["seconds"])[len(results["audit"]) // 2]
        print(f"A read pairs + lists: median {read:.2f} s, peak RSS {max(r['peak_rss'] for r in results['read']):.0f} MiB")
        print(
            f"B neat-data audit:    median {audit:.1f} s, peak RSS {max(r['peak_rss'] for r in results['audit']):.0f} MiB (target ≤ 120 s)"
        )
        print(f"B / A = {audit / read:.0f}×; B's steps (median run): " + ", ".join(f"{k} {v:.1f} s" for k, v in middle["steps"].items()))


if __name__ == "__main__":
    main()
