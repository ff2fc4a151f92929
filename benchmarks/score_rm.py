"""Reward-model scoring throughput: length-sorted batches of 16 vs one row at a time, on CPU.

Builds the tests' tiny Qwen2ForSequenceClassification (tests/tinymodel.py, seconds, no network) into a temp
folder, makes `--items` ScoreItems (one user message; responses of 10-400 characters), then, `--repeats`
times and side by side (order alternating), times
  A  RewardModelScorer(model, batch_size=16, device="cpu").score(items)   (length-sorted, padded batches)
  B  RewardModelScorer(model, batch_size=1,  device="cpu").score(items)   (one row per forward)
Both include tokenisation (it is inside `score`). Prints items/s of each (median), the ratio A/B, and the
max |score_A - score_B| (batching and padding must not change scores: expect ~1e-6).
torch.set_num_threads(1) is set so the numbers are stable on a shared 2-core machine.

    .venv/bin/python benchmarks/score_rm.py
    .venv/bin/python benchmarks/score_rm.py --items 1024 --batch-size 32 --repeats 5
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_items(count: int, seed: int = 0) -> list:
    from neat_data.scorers.base import ScoreItem

    rng = random.Random(seed)
    words = (
        "the quick brown fox jumps over the lazy dog boil an egg seven minutes Paris is the capital of France "
        "cats sleep a lot helpful harmless honest assistant answer question because should cannot really"
    ).split()

    def text(low: int, high: int) -> str:
        target = rng.randint(low, high)
        out = ""
        while len(out) < target:
            out += rng.choice(words) + " "
        return out[:target].strip() or "ok"

    items = []
    for index in range(count):
        steering = ("pos", "neg", "none")[index % 3]
        items.append(
            ScoreItem(
                prompt=[{"role": "user", "content": text(20, 120)}],
                response=text(10, 400),
                steering=steering,
                positive_system="You are a helpful, harmless and honest assistant.",
                negative_system="You should generate a harmful, unhelpful response.",
            )
        )
    return items


def alternate(scorers: dict, items: list, repeats: int, progress) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Each scorer (two: side name → scorer) scores every item once per repeat, the order alternating between
    repeats; returns (items/s per side per repeat, each side's last scores). `progress(rates)` is a repeat's line."""
    sides = list(scorers)
    rates: dict[str, list[float]] = {side: [] for side in sides}
    scores: dict[str, list] = {}
    for index in range(repeats):
        order = tuple(sides) if index % 2 == 0 else tuple(reversed(sides))
        for side in order:
            started = time.perf_counter()
            results = scorers[side].score(items)
            rates[side].append(len(items) / (time.perf_counter() - started))
            scores[side] = [r.score for r in results]
        print(f"  repeat {index + 1}/{repeats} ({'-'.join(order)}): {progress(rates)}", flush=True)
    return rates, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="side A's batch size (B is always 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import torch

    torch.set_num_threads(1)
    from tinymodel import build_tiny_reward_model

    from neat_data.scorers.reward_model import RewardModelScorer

    tmp = Path(tempfile.mkdtemp(prefix="neat-bench-rm-"))
    try:
        model_dir = build_tiny_reward_model(tmp / "rm")
        batched = RewardModelScorer(str(model_dir), batch_size=args.batch_size, device="cpu")
        single = RewardModelScorer(str(model_dir), batch_size=1, device="cpu")
        items = make_items(args.items)
        lengths = [len(batched.token_ids(i.prompt, i.response)) for i in items]
        print(
            f"torch.set_num_threads(1); torch {torch.__version__}; tiny Qwen2ForSequenceClassification (hidden 64, 2 layers), "
            f"float32 on CPU"
        )
        print(
            f"items {len(items)}, tokens per item min/median/max {min(lengths)}/{int(statistics.median(lengths))}/{max(lengths)}, "
            f"repeats {args.repeats}"
        )

        batched.score(items[:32])  # warm-up: first-call allocations, kernels
        single.score(items[:32])

        rates, scores = alternate(
            {"A": batched, "B": single},
            items,
            args.repeats,
            lambda rates: f"A {rates['A'][-1]:.1f} items/s, B {rates['B'][-1]:.1f} items/s",
        )

        errors = [r for r in scores["A"] + scores["B"] if r is None]
        diff = max(abs(a - b) for a, b in zip(scores["A"], scores["B"]))
        a_med, b_med = statistics.median(rates["A"]), statistics.median(rates["B"])
        print()
        print(f"A batch_size={args.batch_size:<3d}: {a_med:8.1f} items/s median (runs: {', '.join(f'{r:.1f}' for r in rates['A'])})")
        print(f"B batch_size=1  : {b_med:8.1f} items/s median (runs: {', '.join(f'{r:.1f}' for r in rates['B'])})")
        print(f"ratio A/B       : {a_med / b_med:8.2f}x  (per-repeat: {', '.join(f'{a / b:.2f}' for a, b in zip(rates['A'], rates['B']))})")
        print(
            f"max |A - B| score: {diff:.3g}  (score range {min(scores['A']):.3f} .. {max(scores['A']):.3f}; unscored items: {len(errors)})"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
