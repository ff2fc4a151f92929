"""Does `generate` scale to a million prompts? Peak memory per added prompt and time against the number of prompts.

`neat-data generate` (openai backend, 2 requests per prompt: one positive, one negative, concurrency 256) runs as a
subprocess against the fake OpenAI server (10 ms latency, its own process) for 10k, 40k and 100k prompts. For each
size it prints wall seconds and the generate process's peak RSS (from wait4), then

    RSS per added prompt  = (RSS(100k) − RSS(10k)) / 90k          goal ≤ 1 KB
    time ratio 40k / 10k                                         goal ≤ 4.4  (4.0 = linear)

Each figure is the median of --repeats runs. Before the streaming rework the same measurement gave +9.4 KB per prompt
and a ratio of 4.2–4.8 (every planned request, key set and message list was held at once, and the final compaction
read every row into Python).

    .venv/bin/python benchmarks/generate_scale.py                 # 10k / 40k / 100k, ~6 min on 2 cores
    .venv/bin/python benchmarks/generate_scale.py --sizes 2000 8000 --repeats 1   # a smoke run
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from openai_backend import fake_server  # noqa: E402


def write_prompts(path: Path, count: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            out.write(json.dumps({"prompt": f"Question {i}: how would you explain topic number {i} to a friend?"}) + "\n")


def run_generate(url: str, prompts: Path, out: Path, concurrency: int) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one `neat-data generate` process."""
    command = [
        sys.executable,
        "-m",
        "neat_data.cli",
        "generate",
        "--prompts",
        str(prompts),
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
        "16",
        "--max-concurrency",
        str(concurrency),
        "--flush-every",
        "4096",
        "--out",
        str(out),
        "--no-progress",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    output = process.stdout.read().decode() if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"generate failed:\n{output[-2000:]}")
    if " 0 error" not in output:
        raise RuntimeError(f"generate had error rows:\n{output[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    results: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory() as work, fake_server(args.latency) as url:
        folder = Path(work)
        for size in sizes:
            write_prompts(folder / f"p{size}.jsonl", size)
        for repeat in range(args.repeats):
            for size in sizes:  # sizes interleaved, so a slow spell of the machine hits every size alike
                out = folder / f"run-{size}-{repeat}"
                results[size].append(run_generate(url, folder / f"p{size}.jsonl", out, args.concurrency))
                seconds, rss = results[size][-1]
                print(f"  {size:>7} prompts: {seconds:7.1f} s, peak RSS {rss:7.1f} MiB", flush=True)
    print(
        f"\ngenerate, openai backend, fake server {args.latency * 1000:.0f} ms, C={args.concurrency}, 2 requests/prompt, "
        f"median of {args.repeats}:"
    )
    median = {size: (statistics.median(s for s, _ in runs), statistics.median(r for _, r in runs)) for size, runs in results.items()}
    for size in sizes:
        seconds, rss = median[size]
        print(f"  {size:>7} prompts: {seconds:7.1f} s ({2 * size / seconds:6.0f} req/s), peak RSS {rss:7.1f} MiB")
    small, large = sizes[0], sizes[-1]
    per_prompt_kb = (median[large][1] - median[small][1]) * 1024 / (large - small)
    print(f"RSS per added prompt ({small}→{large}): {per_prompt_kb:.2f} KB   (goal ≤ 1 KB; before: 9.4 KB)")
    if 10_000 in median and 40_000 in median:
        ratio = median[40_000][0] / median[10_000][0]
        print(f"time ratio 40k/10k: {ratio:.2f}   (goal ≤ 4.4; linear = 4.0)")


if __name__ == "__main__":
    main()
