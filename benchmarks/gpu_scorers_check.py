"""GPU check of the transformers scorers (run on a CUDA machine; not a test, CI has no GPU).

Builds the tiny test models, then checks on CUDA (bf16, as the scorers choose there):
- reward-model: length-sorted batches equal one-row-at-a-time on the GPU, and agree with CPU float32
  within bf16 precision;
- self-contrast: GPU bf16 scores agree with CPU float32 in sign and within bf16 precision.
Prints a small table and exits non-zero on a mismatch.

    python benchmarks/gpu_scorers_check.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    import torch
    from tinymodel import build_tiny_model, build_tiny_reward_model

    from neat_data.scorers.base import ScoreItem
    from neat_data.scorers.reward_model import RewardModelScorer
    from neat_data.scorers.self_contrast import SelfContrastScorer

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp())
    rm, lm = build_tiny_reward_model(work / "rm"), build_tiny_model(work / "lm")
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    responses = [("Boil it for seven minutes. " * (i % 7 + 1)).strip() for i in range(64)]
    items = [ScoreItem(prompt, r, "pos", "Be helpful.", "Be harmful.") for r in responses]
    failures = 0

    started = time.perf_counter()
    gpu_batched = [r.score for r in RewardModelScorer(str(rm), batch_size=16, device="cuda").score(items)]
    seconds = time.perf_counter() - started
    gpu_single = [r.score for r in RewardModelScorer(str(rm), batch_size=1, device="cuda").score(items)]
    cpu = [r.score for r in RewardModelScorer(str(rm), batch_size=16, device="cpu").score(items)]
    batch_gap = max(abs(a - b) for a, b in zip(gpu_batched, gpu_single))
    cpu_gap = max(abs(a - b) for a, b in zip(gpu_batched, cpu))
    spread = max(cpu) - min(cpu)
    print(
        f"reward-model  batched vs single (GPU bf16) max |Δ| {batch_gap:.2e}; GPU bf16 vs CPU fp32 max |Δ| {cpu_gap:.2e} "
        f"(score spread {spread:.3f}); {len(items) / seconds:.0f} items/s incl. load"
    )
    failures += batch_gap > 2e-2 or cpu_gap > 5e-2

    gpu_sc = [r.score for r in SelfContrastScorer(str(lm), batch_size=16, device="cuda").score(items[:16])]
    cpu_sc = [r.score for r in SelfContrastScorer(str(lm), batch_size=16, device="cpu").score(items[:16])]
    sc_gap = max(abs(a - b) for a, b in zip(gpu_sc, cpu_sc))
    print(f"self-contrast GPU bf16 vs CPU fp32 max |Δ| {sc_gap:.2e} (CPU range {min(cpu_sc):.3f}..{max(cpu_sc):.3f})")
    failures += sc_gap > 5e-2
    print("OK" if not failures else f"{failures} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
