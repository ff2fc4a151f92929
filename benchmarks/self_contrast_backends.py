"""Self-contrast scoring throughput: vLLM's prompt log-probs vs the transformers reference, side by side, on CPU.

The embedded SmolLM2-135M-Instruct (`neat_data.core.models` resolves `smollm2-135m-instruct`, no network), float32 on
both sides. `--items` ScoreItems (default 256: one stage chunk, `flush_every`), prompt-aligned as the score stage
sends them (`--per-prompt` responses per prompt), each with the `harmless` library's first pair as its positive
and negative system prompts; word-salad prompts of 20-200 characters and responses of 40-600 characters (about
10-150 tokens). Then, `--repeats` times and side by side (the order alternates), one `score(items)` call of
  T  SelfContrastScorer(model, batch_size=--batch-size, device="cpu")   (transformers, our ResponseLogprobs)
  V  VLLMSelfContrastScorer(model)                                       (one vLLM-CPU engine, VLLMOptions() defaults)
Both include rendering and tokenisation (inside `score`). Prints responses/s of each (median), the ratio V/T
(goal ≥ 2×), the model load / engine start separately (not in the rates), and the max |score_V − score_T| over
all items (the same quantity: float32 rounding only) — a difference above `--tolerance` exits 1.

    .venv/bin/python benchmarks/self_contrast_backends.py
    .venv/bin/python benchmarks/self_contrast_backends.py --items 64 --repeats 1      # quick
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"


def make_items(count: int, per_prompt: int, seed: int = 0) -> list:
    from neat_data.core.pairs import load_libraries
    from neat_data.scorers.base import ScoreItem

    pair = load_libraries("harmless")[0].pairs[0]
    rng = random.Random(seed)
    words = (
        "the quick brown fox jumps over the lazy dog boil an egg seven minutes Paris is the capital of France "
        "cats sleep a lot helpful harmless honest assistant answer question because should cannot really water "
        "first then after before recipe safety think step please simple"
    ).split()

    def text(low: int, high: int) -> str:
        target, out = rng.randint(low, high), ""
        while len(out) < target:
            out += rng.choice(words) + " "
        return out[:target].strip()

    items = []
    for index in range(count):
        if index % per_prompt == 0:
            prompt = [{"role": "user", "content": text(20, 200) + "?"}]
        items.append(
            ScoreItem(
                prompt=prompt,
                response=text(40, 600) + ".",
                steering=("pos", "neg")[index % 2],
                positive_system=pair.positive,
                negative_system=pair.negative,
                finish_reason=("stop", "stop", "length")[index % 3],
            )
        )
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers side's sequences per forward (the stage's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |score_V - score_T| accepted (float32)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    import torch
    from score_rm import alternate  # the same alternating loop as the reward-model benchmark (this folder is on sys.path)

    from neat_data.core.models import resolve_model
    from neat_data.scorers.self_contrast import SelfContrastScorer, VLLMSelfContrastScorer

    resolve_model(MODEL)  # build the embedded model folder once, outside every timing
    started = time.perf_counter()
    reference = SelfContrastScorer(MODEL, batch_size=args.batch_size, device="cpu")
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fast = VLLMSelfContrastScorer(MODEL)
    engine_seconds = time.perf_counter() - started
    try:
        items = make_items(args.items, args.per_prompt)
        lengths = [len(reference.renderer.render(i.prompt, i.response, i.finish_reason, system=i.positive_system).ids) for i in items]
        responses = [reference.renderer.render(i.prompt, i.response, i.finish_reason).response_length for i in items]
        print(
            f"{MODEL}, float32 on CPU ({os.cpu_count()} cores, torch {torch.get_num_threads()} threads), torch {torch.__version__}; "
            f"items {len(items)} ({args.per_prompt} per prompt) = {2 * len(items)} sequences; tokens per sequence "
            f"min/median/max {min(lengths)}/{int(statistics.median(lengths))}/{max(lengths)}, response tokens median "
            f"{int(statistics.median(responses))}; repeats {args.repeats}"
        )
        print(f"start-up (not in the rates): transformers model load {load_seconds:.1f} s, vLLM engine start {engine_seconds:.1f} s")
        reference.score(items[:8])  # warm-up: first-call allocations on both sides
        fast.score(items[:8])

        rates, scores = alternate(
            {"T": reference, "V": fast},
            items,
            args.repeats,
            lambda rates: f"transformers {rates['T'][-1]:.1f} responses/s, vllm {rates['V'][-1]:.1f} responses/s",
        )
        unscored = sum(s is None for s in scores["T"] + scores["V"])
        gap = max(abs(v - t) for v, t in zip(scores["V"], scores["T"]))
        t_med, v_med = statistics.median(rates["T"]), statistics.median(rates["V"])
        print()
        print(
            f"T transformers (batch {args.batch_size}): {t_med:7.1f} responses/s median (runs: {', '.join(f'{r:.1f}' for r in rates['T'])})"
        )
        print(f"V vllm                  : {v_med:7.1f} responses/s median (runs: {', '.join(f'{r:.1f}' for r in rates['V'])})")
        print(
            f"ratio V/T               : {v_med / t_med:7.2f}x  (per repeat: {', '.join(f'{v / t:.2f}' for t, v in zip(rates['T'], rates['V']))}; goal >= 2x)"
        )
        print(
            f"max |score_V - score_T|: {gap:.2e} over {len(items)} items (tolerance {args.tolerance:g}; scores "
            f"{min(scores['T']):.3f} .. {max(scores['T']):.3f}; unscored {unscored})"
        )
        return 0 if gap <= args.tolerance and not unscored else 1
    finally:
        fast.close()


if __name__ == "__main__":
    raise SystemExit(main())
