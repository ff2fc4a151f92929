"""Throughput of 2 shard processes vs 1 process, both against the same local OpenAI-compatible fake server.

The fake server (neat_data.testing.fake_openai_server) runs in its own process with a fixed latency. Each
run is the real CLI in fresh run folders: `neat-data generate … --out A` (one process), then
`neat-data generate … --num-shards 2 --shard-index {0,1}` (two processes at once) + `neat-data merge`.
Prints rows/s for each, the sharded/single ratio with and without the merge, and the medians of
--repeats runs (variants interleaved). With a per-process --max-concurrency C and latency L, one process
is capped near C/L requests/s; two shards should come close to 2×, less process start-up and the merge.

    .venv/bin/python benchmarks/shards.py              # 600 prompts × 2 requests, latency 0.2 s, C 16, 3 repeats (~1 min)
    .venv/bin/python benchmarks/shards.py --quick      # smoke test, < 20 s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from openai_backend import fake_server  # noqa: E402  (same helper: the server in its own process)


def neat(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": "x", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "neat_data.cli", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait(*processes: subprocess.Popen) -> None:
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(process.args[3:6])}… failed ({process.returncode}): {err.strip()[-500:]}")


def one_run(prompts: Path, url: str, concurrency: int, work: Path, tag: str) -> dict[str, float]:
    """Seconds for one process, for two shards (without and with the merge), and the rows each wrote."""
    common = [
        "generate",
        "--prompts",
        str(prompts),
        "--pairs",
        "harmless",
        "--model",
        "fake",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--num-pos",
        "1",
        "--num-neg",
        "1",
        "--max-tokens",
        "8",
        "--max-concurrency",
        str(concurrency),
        "--max-retries",
        "0",
        "--no-progress",
    ]
    started = time.perf_counter()
    wait(neat(*common, "--out", str(work / f"single-{tag}")))
    single = time.perf_counter() - started
    started = time.perf_counter()
    wait(*[neat(*common, "--out", str(work / f"sharded-{tag}"), "--num-shards", "2", "--shard-index", str(i)) for i in range(2)])
    sharded = time.perf_counter() - started
    wait(neat("merge", str(work / f"sharded-{tag}")))
    merged = time.perf_counter() - started
    rows = [
        json.loads((work / name / "manifest.json").read_text())["stages"]["generate"]["rows"]
        for name in (f"single-{tag}", f"sharded-{tag}")
    ]
    if rows[0] != rows[1]:
        raise RuntimeError(f"row counts differ: single {rows[0]}, sharded {rows[1]}")
    return {"rows": rows[0], "single": single, "sharded": sharded, "merged": merged}


def main() -> None:
    parser = argparse.ArgumentParser(description="2 shard processes vs 1 process against one fake OpenAI server.")
    parser.add_argument("--prompts", type=int, default=600, help="prompts per run (2 requests each: pos + neg)")
    parser.add_argument("--latency", type=float, default=0.2, help="server seconds per request")
    parser.add_argument("--concurrency", type=int, default=16, help="--max-concurrency of each process")
    parser.add_argument("--repeats", type=int, default=3, help="runs; medians are printed")
    parser.add_argument("--quick", action="store_true", help="150 prompts, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.repeats = 150, 1
    with tempfile.TemporaryDirectory(prefix="neat-shards-bench-") as temp, fake_server(args.latency) as url:
        work = Path(temp)
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Benchmark question {i}: say something."}) + "\n" for i in range(args.prompts)))
        cap = args.concurrency / args.latency
        print(
            f"{args.prompts} prompts × 2 requests, server latency {args.latency:g} s, --max-concurrency {args.concurrency} per process "
            f"(one process ≤ {cap:.0f} req/s), median of {args.repeats}"
        )
        runs = [one_run(prompts, url, args.concurrency, work, str(i)) for i in range(args.repeats)]
    rows = runs[0]["rows"]
    median = {name: statistics.median(run[name] for run in runs) for name in ("single", "sharded", "merged")}
    print(f"  {'variant':<28}{'seconds':>9}{'rows/s':>9}   (per run: seconds)")
    for name, label in (("single", "1 process"), ("sharded", "2 shard processes"), ("merged", "2 shard processes + merge")):
        per_run = ", ".join(f"{run[name]:.1f}" for run in runs)
        print(f"  {label:<28}{median[name]:>9.1f}{rows / median[name]:>9.0f}   ({per_run})")
    ratios = [run["single"] / run["sharded"] for run in runs]
    ratios_merged = [run["single"] / run["merged"] for run in runs]
    print(
        f"throughput ratio, 2 shards / 1 process: {statistics.median(ratios):.2f}x (median of {len(ratios)}; "
        f"{statistics.median(ratios_merged):.2f}x including the merge)"
    )


if __name__ == "__main__":
    main()
