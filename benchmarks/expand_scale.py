"""What does expanding a preference dataset cost over generating on its prompts alone (issue 29)?

A synthetic HH-RLHF file of --pairs original pairs (`chosen`/`rejected` transcripts sharing the prompt) runs through
the same four stages twice, side by side, each stage its own `neat-data` subprocess (so its peak RSS is its own):

  A  prompts alone: generate --prompts FILE (the transcripts' prompt only) → score → rank → export trl
  B  expansion:     generate --prompts FILE --responses keep --layout hh (each pair's two answers join the lists as
                    rows of steering 'dataset') → score → rank → export trl

generate: openai backend against the fake OpenAI server (its own process, --latency), 2 positive + 2 negative answers
per prompt, ≤ 16 tokens; score: a `python:` scorer (the answer's length in characters, benchmarks/expand_scale.py
itself); rank: best-vs-worst; export: trl. B has 6 candidates per prompt where A has 4.

Prints, per side, the median over --repeats of the summed wall seconds of the four stages and the largest peak RSS of
any stage (ru_maxrss from wait4), with the per-stage breakdown, then

    time ratio B / A                                     goal ≤ 1.3
    RSS per added pair = (peak RSS B − peak RSS A) / pairs   goal ≤ 1 KB

Wall time includes each subprocess's interpreter start and imports (~2–3 s a stage on a busy 2-core machine): at a
small --pairs they dominate both sides alike, and the ratio says little; run at 100k for the figure.

Measured once at 100k pairs, 1 repeat, nice -n 15 on the shared 2-core machine (other test runs beside it):
A 1707.7 s / peak 3503 MiB (400k rows; generate 1461 s, score 230 s / 3503 MiB, rank 12 s, export 5 s),
B 842.6 s / peak 4663 MiB (600k rows; generate 587 s, score 231 s / 4663 MiB, rank 17 s, export 8 s). The time ratio
(0.49) is noise: the two generate runs sent the same 400k requests and differ 2.5× with the machine's load; without
generate, B / A = 255 / 247 s = 1.04. RSS per added pair 11.9 KB, over the goal: the peak is the score stage's
(`python:` scorer), ~8–9 KB per row on both sides alike, so the expansion's 200k added rows cost what 200k generated
rows cost; the goal needs a score stage that does not hold every row (open).

    .venv/bin/python benchmarks/expand_scale.py                          # 100,000 pairs, 3 repeats
    .venv/bin/python benchmarks/expand_scale.py --pairs 2000 --repeats 1  # a smoke run (~1 min)
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

STAGES = ("generate", "score", "rank", "export")


def response_length(prompts: list, responses: list[str]) -> list[float]:
    """The benchmark's `python:` scorer: the answer's length in characters (cheap, and never a tie at random)."""
    return [float(len(response)) for response in responses]


def write_pairs(path: Path, count: int) -> None:
    """`count` HH-RLHF rows: a one-turn prompt, a longer chosen answer and a shorter rejected one."""
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            prompt = f"\n\nHuman: Question {i}: how would you explain topic number {i} to a friend?\n\nAssistant: "
            chosen = f"Start with what they already know about topic {i}, then add one new idea at a time, with an example."
            rejected = f"Topic {i} is hard; look it up."
            out.write(json.dumps({"chosen": prompt + chosen, "rejected": prompt + rejected}) + "\n")


def stage_commands(side: str, url: str, pairs_file: Path, run: Path) -> list[list[str]]:
    generate = [
        "generate",
        "--prompts",
        str(pairs_file),
        "--model",
        "fake",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--num-pos",
        "2",
        "--num-neg",
        "2",
        "--max-tokens",
        "16",
        "--max-concurrency",
        "256",
        "--flush-every",
        "4096",
        "--out",
        str(run),
        "--no-progress",
    ]
    if side == "B":
        generate += ["--responses", "keep", "--layout", "hh"]
    return [
        generate,
        ["score", str(run), "--scorer", "python:expand_scale:response_length", "--no-progress"],
        ["rank", str(run), "--pairs", "best-vs-worst"],
        ["export", str(run), "--format", "trl"],
    ]


def run_stage(arguments: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one `neat-data` subprocess."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "neat_data.cli", *arguments], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    output = process.stdout.read().decode()  # read while it runs: a full pipe would block the child
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{arguments[0]} failed:\n{output[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def run_side(side: str, url: str, pairs_file: Path, run: Path) -> dict[str, tuple[float, float]]:
    return {name: run_stage(arguments) for name, arguments in zip(STAGES, stage_commands(side, url, pairs_file, run))}


def count_rows(run: Path) -> tuple[int, int]:
    """(generations rows, TRL export rows) of a finished run folder."""
    import pyarrow.dataset as ds

    generations = ds.dataset(run / "generations", format="parquet").count_rows()
    exported = sum(ds.dataset(path, format="parquet").count_rows() for path in (run / "export" / "trl").glob("*.parquet"))
    return generations, exported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000, help="original pairs in the synthetic HH file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.01, help="the fake server's latency per request, seconds")
    args = parser.parse_args()
    results: dict[str, list[dict[str, tuple[float, float]]]] = {"A": [], "B": []}
    counts: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as work, fake_server(args.latency) as url:
        folder = Path(work)
        pairs_file = folder / "pairs.jsonl"
        write_pairs(pairs_file, args.pairs)
        for repeat in range(args.repeats):
            for side in ("A", "B") if repeat % 2 == 0 else ("B", "A"):  # alternated: a slow spell hits both sides
                run = folder / f"{side}-{repeat}"
                results[side].append(run_side(side, url, pairs_file, run))
                counts[side] = count_rows(run)
                stages = results[side][-1]
                total = sum(seconds for seconds, _ in stages.values())
                peak = max(rss for _, rss in stages.values())
                print(f"  {side} repeat {repeat}: {total:7.1f} s, peak RSS {peak:7.1f} MiB", flush=True)
    names = {"A": "prompts alone", "B": "expansion"}
    print(
        f"\n{args.pairs} original pairs; 2 pos + 2 neg answers per prompt (fake server {args.latency * 1000:.0f} ms), python: "
        f"scorer, rank best-vs-worst, export trl; median of {args.repeats}:"
    )
    median: dict[str, tuple[float, float]] = {}
    for side in ("A", "B"):
        runs = results[side]
        total = statistics.median(sum(s for s, _ in run.values()) for run in runs)
        peak = statistics.median(max(r for _, r in run.values()) for run in runs)
        median[side] = (total, peak)
        breakdown = ", ".join(
            f"{name} {statistics.median(run[name][0] for run in runs):.1f} s / {statistics.median(run[name][1] for run in runs):.0f} MiB"
            for name in STAGES
        )
        rows, exported = counts[side]
        print(f"  {side} {names[side]:<13}: {total:7.1f} s, peak RSS {peak:7.1f} MiB ({rows} rows, {exported} TRL rows) — {breakdown}")
    ratio = median["B"][0] / median["A"][0]
    per_pair_kb = (median["B"][1] - median["A"][1]) * 1024 / args.pairs
    print(f"time ratio B / A: {ratio:.2f}   (goal ≤ 1.3)")
    print(f"RSS per added pair: {per_pair_kb:.2f} KB   (goal ≤ 1 KB)")


if __name__ == "__main__":
    main()
