"""GPU check of the transformers scorers and the evaluate stage's perplexity (part of scripts/gpu_check.sh).

Builds the tiny test models (tests/tinymodel.py, no network), then on the device (bf16 on CUDA, as the scorers
choose there; `--cpu`: float32 on CPU, a smoke run of the same code) against CPU float32:
- reward-model: length-sorted batches equal one-row-at-a-time on the device, and agree with CPU float32;
- self-contrast: device scores agree with CPU float32 within bf16 precision (`SelfContrastScorer`);
- evaluate: `neat_data.lm.perplexity.perplexity` (the evaluate stage's) on the device agrees with CPU float32;
- on CUDA also self-contrast throughput, responses/s, on a random model of `--shape` (default qwen2-0.5b) with
  the tiny tokenizer, saved and loaded as any model folder.
Only torch + transformers (+ tokenizers) are needed: on an image without pydantic the scorer modules are imported
without `neat_data/scorers/__init__.py` (which holds the pydantic ScorerOptions, not the scorers). Prints a small
table, writes `--json`, exits non-zero on a mismatch.

    python benchmarks/gpu_scorers_check.py [--cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def import_scorers() -> tuple[type, type, type]:
    """(ScoreItem, RewardModelScorer, SelfContrastScorer), with or without pydantic installed."""
    try:
        import pydantic  # noqa: F401
    except ImportError:
        package = types.ModuleType("neat_data.scorers")  # the package's modules, without its options module
        package.__path__ = [str(ROOT / "neat_data" / "scorers")]
        sys.modules["neat_data.scorers"] = package
    from neat_data.scorers.base import ScoreItem
    from neat_data.scorers.reward_model import RewardModelScorer
    from neat_data.scorers.self_contrast import SelfContrastScorer

    return ScoreItem, RewardModelScorer, SelfContrastScorer


def self_contrast_throughput(shape: str, work: Path, items: list, device: str) -> dict:
    """responses/s of SelfContrastScorer on a random model of `shape` (bf16 on CUDA), batch 16, median of 3."""
    import statistics

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tinymodel import build_tokenizer
    from train_step import build_model

    _, _, SelfContrastScorer = import_scorers()
    folder = work / f"random-{shape}"
    build_model(shape, "cpu").save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    scorer = SelfContrastScorer(str(folder), batch_size=16, device=device)
    scorer.score(items[:16])  # warm-up
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        scorer.score(items)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        rates.append(len(items) / (time.perf_counter() - started))
    return {"shape": shape, "items": len(items), "responses_per_s": statistics.median(rates), "runs": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="smoke run on CPU (float32 against float32)")
    parser.add_argument("--shape", default="qwen2-0.5b", help="random model for the CUDA throughput figure")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    import torch
    from tinymodel import build_tiny_model, build_tiny_reward_model

    from neat_data.lm.perplexity import perplexity

    ScoreItem, RewardModelScorer, SelfContrastScorer = import_scorers()
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (--cpu for a smoke run)")
        return 0
    device = "cpu" if args.cpu else "cuda"
    # bf16 on CUDA: ~3 significant digits per log-prob; float32 against float32 on CPU: rounding only
    tolerance = {"batch": 1e-5, "cross": 1e-5} if args.cpu else {"batch": 2e-2, "cross": 5e-2}
    print(f"device: {torch.cuda.get_device_name(0) if not args.cpu else 'cpu'}, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp())
    rm, lm = build_tiny_reward_model(work / "rm"), build_tiny_model(work / "lm")
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    responses = [("Boil it for seven minutes. " * (i % 7 + 1)).strip() for i in range(64)]
    items = [ScoreItem(prompt, r, "pos", "Be helpful.", "Be harmful.", ("stop", "length")[i % 2]) for i, r in enumerate(responses)]
    report: dict = {"device": device, "checks": {}}
    failures = 0

    started = time.perf_counter()
    dev_batched = [r.score for r in RewardModelScorer(str(rm), batch_size=16, device=device).score(items)]
    seconds = time.perf_counter() - started
    dev_single = [r.score for r in RewardModelScorer(str(rm), batch_size=1, device=device).score(items)]
    cpu = [r.score for r in RewardModelScorer(str(rm), batch_size=16, device="cpu").score(items)]
    batch_gap = max(abs(a - b) for a, b in zip(dev_batched, dev_single))
    cpu_gap = max(abs(a - b) for a, b in zip(dev_batched, cpu))
    print(
        f"reward-model  batched vs single ({device}) max |Δ| {batch_gap:.2e}; {device} vs CPU fp32 max |Δ| {cpu_gap:.2e} "
        f"(score spread {max(cpu) - min(cpu):.3f}); {len(items) / seconds:.0f} items/s incl. load"
    )
    ok = batch_gap <= tolerance["batch"] and cpu_gap <= tolerance["cross"]
    report["checks"]["reward_model"] = {"batch_gap": batch_gap, "cpu_gap": cpu_gap, "ok": ok}
    failures += not ok

    dev_sc = [r.score for r in SelfContrastScorer(str(lm), batch_size=16, device=device).score(items[:16])]
    cpu_sc = [r.score for r in SelfContrastScorer(str(lm), batch_size=16, device="cpu").score(items[:16])]
    sc_gap = max(abs(a - b) for a, b in zip(dev_sc, cpu_sc))
    print(f"self-contrast {device} vs CPU fp32 max |Δ| {sc_gap:.2e} (CPU range {min(cpu_sc):.3f}..{max(cpu_sc):.3f})")
    ok = sc_gap <= tolerance["cross"]
    report["checks"]["self_contrast"] = {"cpu_gap": sc_gap, "scores": dev_sc, "ok": ok}
    failures += not ok

    rows = [{"prompt": prompt, "responses": responses[:8], "finish_reason": ["stop", "length"] * 4}]
    dev_ppl, tokens = perplexity(str(lm), rows, max_length=256, device=device)
    cpu_ppl, _ = perplexity(str(lm), rows, max_length=256, device="cpu")
    relative = abs(dev_ppl - cpu_ppl) / cpu_ppl
    print(f"evaluate perplexity {device} {dev_ppl:.4f} vs CPU fp32 {cpu_ppl:.4f} over {tokens} tokens (relative |Δ| {relative:.2e})")
    ok = relative <= tolerance["cross"] and tokens > 0
    report["checks"]["perplexity"] = {"device": dev_ppl, "cpu": cpu_ppl, "tokens": tokens, "relative_gap": relative, "ok": ok}
    failures += not ok

    if not args.cpu:
        long_items = [ScoreItem(prompt, r * 8, "pos", "Be helpful.", "Be harmful.", "stop") for r in responses] * 4
        figure = self_contrast_throughput(args.shape, work, long_items, device)
        print(
            f"self-contrast throughput, random {figure['shape']} bf16: {figure['responses_per_s']:.1f} responses/s (median of 3, {figure['items']} items)"
        )
        report["self_contrast_throughput"] = figure
    report["failures"] = int(failures)
    print("OK" if not failures else f"{failures} check(s) FAILED")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
