"""scripts/gpu_check.sh --cpu: every part of the prepared GPU check runs (tiny shapes, CPU float32) and writes its
figures, so the script a GPU machine will run is exercised here (the CUDA paths themselves have not run yet)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gpu_check_cpu_smoke_run_writes_every_part(tmp_path: Path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path)}
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=800)
    log = result.stdout[-4000:] + result.stderr[-2000:]
    eager = json.loads((tmp_path / "train_eager.json").read_text())
    assert set(eager["sides"]) == {"sft", "neat-rrhf", "neat-pro", "neat-dpo"}, log
    for name, side in eager["sides"].items():
        assert side["tokens_per_s"] > 0 and len(side["steps_s"]) == 2
        if name != "sft":  # the trainer's objective ran: its parts are finite numbers
            assert math.isfinite(side["loss"]) and math.isfinite(side["rank_loss"]) and side["ratio_to_sft"] > 0
    assert eager["sides"]["neat-dpo"]["pairs"] == 2.0  # best-vs-worst: one pair per prompt, B = 2
    assert eager["flops_per_token"] == 6 * eager["params"] + 12 * 2 * 64 * 32  # tiny: 2 layers, hidden 64, T 32
    for mode in ("ddp", "fsdp"):
        report = json.loads((tmp_path / f"train_{mode}.json").read_text())
        assert report["world"] == 2 and report["distributed"] == mode and set(report["sides"]) == {"neat-rrhf", "neat-dpo"}, log
        assert all(math.isfinite(side["loss"]) for side in report["sides"].values())
    scorers = json.loads((tmp_path / "scorers.json").read_text())
    assert scorers["failures"] == 0 and set(scorers["checks"]) == {"reward_model", "self_contrast", "perplexity"}
    assert scorers["checks"]["perplexity"]["tokens"] > 0 and len(scorers["checks"]["self_contrast"]["scores"]) == 16
    assert "gpu_check: all parts passed" in result.stdout and "neat-dpo" in result.stdout.split("== summary")[1]
