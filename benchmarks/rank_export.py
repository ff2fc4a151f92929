"""Cost of neat-data's rank + export path over a bare pyarrow read + write of the same scored table.

A synthetic scored table (schema SCORED, one row per response; 5 candidates per prompt: 2 pos, 2 neg,
1 none; random 40-200 character responses, random float scores, all status/score_status "ok") is written
once to a Parquet file. Then, `--repeats` times and side by side (the order alternates between repeats),
each side runs in a fresh subprocess, so its peak RSS is its own:

  A  bare:  pq.read_table(file) -> pq.write_table(same table, other file, zstd)
  B  ours:  the two stages as the CLI runs them, on a run folder whose scored/ holds that file:
            run_rank(RankConfig(pairs="best-vs-worst")) (lock, read scored/, rank_tables, write ranked/lists,
            pairs and dropped.parquet, manifest) -> run_export(ExportConfig(format="trl")) (read ranked/pairs,
            export_table -> train.parquet + datasets.Dataset + hf/ save_to_disk, manifest, croissant.json)

Timings are taken inside the child after its imports (pyarrow for A; neat_data + datasets for B) and a
tiny warm-up read + write, so interpreter start-up and import time (including pq.read_table's lazy import of
pyarrow.dataset) are not counted. Peak RSS is ru_maxrss of the child; "growth" is that
peak minus the RSS right after the imports. Prints the median seconds of A and B, the ratio B/A
(goal <= 1.5x), their CPU seconds (user, system), peak RSS, and a per-step breakdown of B for its median run
(B writes in background threads, so "waiting for staged writes" is what is left of them once B's compute is done).

On a VM, memory a process touches for the first time can cost from 0.1 s to 2 s per GiB of system time, run to
run (the host backs it lazily): that, not the code, is most of the spread between repeats. Hence 5 repeats, medians.

    .venv/bin/python benchmarks/rank_export.py                    # 1,000,000 rows, 5 repeats
    .venv/bin/python benchmarks/rank_export.py --rows 300000
    .venv/bin/python benchmarks/rank_export.py --quick            # 100,000 rows, 1 repeat
    .venv/bin/python benchmarks/rank_export.py --quick --profile  # + cProfile of B (top 15 in neat_data)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def cpu_since(start: tuple[float, float]) -> dict[str, float]:
    user, system = cpu_seconds()
    return {"user": user - start[0], "system": system - start[1]}


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------------------------------- data


def build_scored(rows: int, seed: int = 0):
    """A SCORED table of `rows` rows, 5 candidates per prompt (pos, pos, neg, neg, none)."""
    import numpy as np
    import pyarrow as pa

    from neat_data.core.schemas import MESSAGE, SCORED

    rng = np.random.default_rng(seed)
    vocab = np.array(
        [
            "the",
            "a",
            "model",
            "answer",
            "water",
            "boil",
            "egg",
            "minutes",
            "Paris",
            "capital",
            "France",
            "cat",
            "sleep",
            "helpful",
            "harmless",
            "honest",
            "please",
            "cannot",
            "because",
            "should",
            "question",
            "simple",
            "really",
            "first",
            "then",
            "after",
            "before",
            "recipe",
            "safety",
            "think",
            "step",
            "dog",
            "quick",
            "brown",
            "fox",
            "lazy",
            "jumps",
            "over",
            "seven",
            "hot",
        ]
    )
    corpus = " ".join(rng.choice(vocab, size=rows * 25 + 10_000).tolist())

    def texts(count: int, low: int, high: int) -> list[str]:
        lengths = rng.integers(low, high + 1, size=count)
        starts = rng.integers(0, len(corpus) - high - 1, size=count)
        return [corpus[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist())]

    per_prompt = 5
    steering_cycle = ["pos", "pos", "neg", "neg", "none"]
    n_prompts = -(-rows // per_prompt)
    prompt_of_row = np.arange(rows) // per_prompt
    slot = (np.arange(rows) % per_prompt).tolist()
    prompt_hex = [f"{v:016x}" for v in rng.integers(0, 2**63, size=n_prompts).tolist()]
    prompt_ids = [prompt_hex[p] for p in prompt_of_row.tolist()]
    steering = [steering_cycle[s] for s in slot]
    steered = [s != "none" for s in steering]

    prompt_texts = pa.array(texts(n_prompts, 20, 120), type=pa.string())
    user_messages = pa.StructArray.from_arrays([pa.array(["user"] * n_prompts), prompt_texts], fields=list(MESSAGE))
    message_index = pa.array(prompt_of_row, type=pa.int64())
    prompt_column = pa.ListArray.from_arrays(pa.array(np.arange(rows + 1), type=pa.int32()), user_messages.take(message_index))

    scores = rng.normal(0.0, 2.0, size=rows)
    pair_ids = [f"harmless-{p % 16:02d}" for p in prompt_of_row.tolist()]
    columns = {
        "key": [f"{v:032x}" for v in rng.integers(0, 2**63, size=rows).tolist()],
        "round": pa.array(np.zeros(rows, dtype=np.int32)),
        "prompt_id": prompt_ids,
        "prompt": prompt_column,
        "steering": steering,
        "pair_library": ["harmless" if s else None for s in steered],
        "system_prompt_id": [p if s else None for p, s in zip(pair_ids, steered)],
        "system_prompt_hash": [f"{abs(hash(p)) % 16**16:016x}" if s else None for p, s in zip(pair_ids, steered)],
        "system_prompt": [
            ("You are a helpful, harmless and honest assistant." if st == "pos" else "You should generate a harmful, unhelpful response.")
            if s
            else None
            for st, s in zip(steering, steered)
        ],
        "system_mode": ["system" if s else "none" for s in steered],
        "system_combine": pa.nulls(rows, pa.string()),  # no prompt brings its own system message
        "settings_hash": pa.nulls(rows, pa.string()),
        "sample_index": pa.array(np.array([x % 2 for x in slot], dtype=np.int32)),
        "response": texts(rows, 40, 200),
        "finish_reason": ["stop"] * rows,
        "model": ["tiny-bench"] * rows,
        "backend": ["vllm"] * rows,
        "sampling": ['{"max_tokens": 256, "seed": 0, "temperature": 0.8, "top_p": 1.0}'] * rows,
        "seed": pa.array(rng.integers(0, 2**62, size=rows)),
        "n_fallback": pa.array(np.zeros(rows, dtype=bool)),
        "prompt_tokens": pa.array(rng.integers(10, 60, size=rows).astype(np.int32)),
        "completion_tokens": pa.array(rng.integers(10, 60, size=rows).astype(np.int32)),
        "status": ["ok"] * rows,
        "error": pa.nulls(rows, pa.string()),
        "score": pa.array(scores),
        "raw_score": pa.array(scores),
        "scorer": ["reward-model:tiny-bench"] * rows,
        "negative_score": ["scored"] * rows,
        "score_status": ["ok"] * rows,
        "score_error": pa.nulls(rows, pa.string()),
    }
    arrays = [c if isinstance(c, pa.Array) else pa.array(c, type=f.type) for f, c in zip(SCORED, (columns[f.name] for f in SCORED))]
    arrays = [a.cast(f.type) if a.type != f.type else a for a, f in zip(arrays, SCORED)]
    return pa.Table.from_arrays(arrays, schema=SCORED)


# ---------------------------------------------------------------------------------------------- sides


def warm_up(work: Path) -> None:
    """One tiny read + write, so lazy imports (pq.read_table pulls in pyarrow.dataset, ~0.6 s) and codec set-up
    are paid before the clock starts, on both sides alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = work / "warm.parquet"
    pq.write_table(pa.table({"x": ["warm"]}), path, compression="zstd")
    pq.read_table(path)
    path.unlink()


def side_a(src: Path, work: Path) -> dict:
    import pyarrow.parquet as pq

    warm_up(work)
    base = current_rss_mib()
    cpu = cpu_seconds()
    started = time.perf_counter()
    table = pq.read_table(src)
    read = time.perf_counter()
    pq.write_table(table, work / "copy.parquet", compression="zstd")
    done = time.perf_counter()
    return {
        "seconds": done - started,
        "cpu": cpu_since(cpu),
        "steps": {"read": read - started, "write": done - read},
        "base_rss": base,
        "peak_rss": max_rss_mib(),
    }


def side_b(src: Path, work: Path) -> dict:
    import datasets  # noqa: F401  (imported here so its import time is not counted; run_export imports it lazily)

    import neat_data.core.runfolder as runfolder
    import neat_data.stages.export as export
    import neat_data.stages.rank.stage as rank

    steps: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - started

        return wrapper

    # sub-step timers: wrap the module-level names that run_rank / run_export look up at call time
    runfolder.ShardedTable.read = timed("  rank: read scored/", runfolder.ShardedTable.read)
    rank.rank_lists = timed("  rank: rank_lists", rank.rank_lists)
    rank.rank_pairs = timed("  rank: rank_pairs (lists.parquet written meanwhile)", rank.rank_pairs)
    runfolder.StagedWrites.__exit__ = timed("  waiting for staged writes", runfolder.StagedWrites.__exit__)
    export.export_table = timed("  export: read pairs + export_table", export.export_table)
    datasets.DatasetDict.save_to_disk = timed("  export: save_to_disk (hf/)", datasets.DatasetDict.save_to_disk)
    export.write_croissant = timed("  export: croissant.json", export.write_croissant)

    warm_up(work)
    run = work / "run"
    (run / "scored").mkdir(parents=True)
    shutil.copyfile(src, run / "scored" / "part-000000.parquet")  # the run folder score would have left
    base = current_rss_mib()
    cpu = cpu_seconds()
    started = time.perf_counter()
    summary = rank.run_rank(rank.RankConfig(run=run, pairs="best-vs-worst"))
    t_rank = time.perf_counter()
    rank_wait = steps.get("  waiting for staged writes", 0.0)
    rss_after = {"run_rank": max_rss_mib()}
    _, exported = export.run_export(export.ExportConfig(run=run, format="trl"))
    done = time.perf_counter()
    rss_after["run_export"] = max_rss_mib()

    ordered = {"run_rank": t_rank - started}
    rank_steps = ["  rank: read scored/", "  rank: rank_lists", "  rank: rank_pairs (lists.parquet written meanwhile)"]
    ordered.update({name: steps.get(name, 0.0) for name in rank_steps})
    ordered["  rank: waiting for staged writes"] = rank_wait
    ordered["  rank: lock, manifest"] = ordered["run_rank"] - sum(steps.get(n, 0.0) for n in rank_steps) - rank_wait
    ordered["run_export"] = done - t_rank
    sub = ["  export: read pairs + export_table", "  export: save_to_disk (hf/)", "  export: croissant.json"]
    ordered.update({name: steps.get(name, 0.0) for name in sub})
    ordered["  export: waiting for train.parquet"] = steps.get("  waiting for staged writes", 0.0) - rank_wait
    ordered["  export: other"] = ordered["run_export"] - sum(ordered[n] for n in [*sub, "  export: waiting for train.parquet"])
    return {
        "seconds": done - started,
        "cpu": cpu_since(cpu),
        "steps": ordered,
        "base_rss": base,
        "peak_rss": max_rss_mib(),
        "rss_after": rss_after,
        "prompts": summary.prompts,
        "pairs": summary.pairs_kept,
        "exported": exported,
    }


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    if args.child == "build":  # in a child: a peak RSS survives exec, so the driver must never hold the table
        import pyarrow.parquet as pq

        table = build_scored(args.rows)
        pq.write_table(table, args.src, compression="zstd")
        print(f"RESULT {json.dumps({'rows': table.num_rows, 'mib': table.nbytes / 2**20})}")
        return
    work = Path(args.work)
    if args.child == "profile":
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        side_b(Path(args.src), work)
        profile.disable()
        stats = pstats.Stats(profile)
        stats.sort_stats("cumulative")
        print("--- cProfile of B, top 15 by cumulative time, neat_data functions ---")
        stats.print_stats(r"neat_data", 15)
        print("--- top 20 by own (tottime) time, all functions ---")
        stats.sort_stats("tottime").print_stats(20)
        return
    result = (side_a if args.child == "A" else side_b)(Path(args.src), work)
    print("RESULT " + json.dumps(result))


def run_child(side: str, src: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", side, "--src", str(src), "--work", str(work)], capture_output=True, text=True, cwd=ROOT
    )
    shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"side {side} failed:\n{proc.stdout}\n{proc.stderr}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 1 repeat")
    parser.add_argument("--profile", action="store_true", help="also run B once under cProfile and print the hotspots")
    parser.add_argument("--child", choices=["A", "B", "profile", "build"], help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.rows, args.repeats = 100_000, 1

    sys.path.insert(0, str(ROOT))

    tmp = Path(tempfile.mkdtemp(prefix="neat-bench-rank-"))
    try:
        started = time.perf_counter()
        src = tmp / "scored.parquet"
        proc = subprocess.run(
            [sys.executable, str(HERE), "--child", "build", "--rows", str(args.rows), "--src", str(src)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            sys.exit(f"building the table failed:\n{proc.stdout}\n{proc.stderr}")
        built = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
        print(
            f"synthetic scored table: {built['rows']:,} rows, {built['mib']:.0f} MiB in memory, "
            f"{src.stat().st_size / 2**20:.0f} MiB on disk (zstd); built in {time.perf_counter() - started:.1f} s (in a child process)"
        )

        results: dict[str, list[dict]] = {"A": [], "B": []}
        for index in range(args.repeats):
            order = ("A", "B") if index % 2 == 0 else ("B", "A")
            for side in order:
                results[side].append(run_child(side, src, tmp / f"{side}{index}"))
            a, b = results["A"][-1], results["B"][-1]
            print(
                f"  repeat {index + 1}/{args.repeats} ({'-'.join(order)}): A {a['seconds']:.2f} s, B {b['seconds']:.2f} s, "
                f"B/A {b['seconds'] / a['seconds']:.2f}",
                flush=True,
            )

        a_secs = [r["seconds"] for r in results["A"]]
        b_secs = [r["seconds"] for r in results["B"]]
        a_med, b_med = statistics.median(a_secs), statistics.median(b_secs)
        ratios = [b / a for a, b in zip(a_secs, b_secs)]
        b_median_run = sorted(results["B"], key=lambda r: r["seconds"])[(len(b_secs) - 1) // 2]
        a_median_run = sorted(results["A"], key=lambda r: r["seconds"])[(len(a_secs) - 1) // 2]

        def rss(side: str) -> str:
            peaks = [r["peak_rss"] for r in results[side]]
            growth = [r["peak_rss"] - r["base_rss"] for r in results[side]]
            return (
                f"peak {statistics.median(peaks):7.0f} MiB, growth over post-import RSS "
                f"{statistics.median(growth):7.0f} MiB (median of {len(peaks)})"
            )

        first = results["B"][0]
        print()
        print(
            f"rows {args.rows:,}, prompts {first['prompts']:,}, pairs kept {first['pairs']:,}, exported rows {first['exported']:,}, "
            f"repeats {args.repeats}, one subprocess per side per repeat"
        )
        print(f"A bare read+write  : {a_med:7.2f} s median (runs: {', '.join(f'{s:.2f}' for s in a_secs)})")
        print(f"B rank+export      : {b_med:7.2f} s median (runs: {', '.join(f'{s:.2f}' for s in b_secs)})")
        print(f"ratio B/A          : {b_med / a_med:7.2f}x  (per-repeat: {', '.join(f'{r:.2f}' for r in ratios)}; goal <= 1.5x)")

        def cpu(side: str) -> str:
            user = statistics.median(r["cpu"]["user"] for r in results[side])
            system = statistics.median(r["cpu"]["system"] for r in results[side])
            return f"user {user:5.2f} s, system {system:5.2f} s (medians; the wall time is less where threads overlap)"

        print(f"CPU A              : {cpu('A')}")
        print(f"CPU B              : {cpu('B')}")
        print(f"RSS A              : {rss('A')}")
        print(f"RSS B              : {rss('B')}")
        print()
        print(
            f"A steps (median run, {a_median_run['seconds']:.2f} s): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in a_median_run["steps"].items())
        )
        print(f"B steps (median run, {b_median_run['seconds']:.2f} s):")
        for name, seconds in b_median_run["steps"].items():
            peak = b_median_run["rss_after"].get(name.split(" (")[0].strip())
            peak_text = f"   peak RSS so far {peak:6.0f} MiB" if peak else ""
            print(f"  {name:34s} {seconds:7.2f} s  {100 * seconds / b_median_run['seconds']:5.1f}%{peak_text}")

        if args.profile:
            print()
            work = tmp / "profile"
            work.mkdir()
            proc = subprocess.run(
                [sys.executable, str(HERE), "--child", "profile", "--src", str(src), "--work", str(work)],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            print(proc.stdout)
            if proc.returncode != 0:
                print(proc.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
