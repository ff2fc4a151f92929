#!/usr/bin/env bash
# The prepared GPU check: NEAT trainer steps (RRHF, PRO, DPO against an SFT step of the same tokens) in bf16, eager
# and torch.compile'd, with tokens/s and MFU on a random ~0.5B (Qwen2-0.5B-shaped) model; self-contrast, the reward
# model and the evaluate stage's perplexity on CUDA against CPU float32; DDP and FSDP2 when there is more than one GPU.
#
#   bash scripts/gpu_check.sh           # on a CUDA machine: torch + transformers only (no vLLM, no network, no pydantic)
#   bash scripts/gpu_check.sh --cpu     # smoke run of every part on CPU, tiny shapes (tests/test_gpu_check.py runs it)
#
# Needs only this repository (PYTHONPATH is set here; `pip install -e . --no-deps` works too) and builds its models on
# the machine. Each part has its own time limit (6 minutes in all on one GPU, 8 with the multi-GPU parts); the
# figures also go to JSON files in $GPU_CHECK_OUT (default: a new temp folder), named at the end.
# MFU = tokens/s × (6·N + 12·L·H·T) / peak, N parameters, L layers, H hidden, T sequence length (PaLM appendix B);
# peaks per GPU type: benchmarks/train_step.py PEAK_BF16_TFLOPS (H100 SXM / H200 989, H100 PCIe 756, A100 312 TFLOP/s).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
OUT="${GPU_CHECK_OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
MODE=gpu
case "${1:-}" in
  --cpu) MODE=cpu ;;
  "") ;;
  *) echo "usage: bash scripts/gpu_check.sh [--cpu]" >&2; exit 2 ;;
esac
failures=0

part() {  # part NAME SECONDS COMMAND…: run one part under its own time limit; a failure is counted, the rest still run
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local code=$?
  if [ $code -ne 0 ]; then
    echo "FAILED: $name (exit $code$([ $code -eq 124 ] && echo ', time limit'))"
    failures=$((failures + 1))
  fi
  echo "   ($((SECONDS - started)) s)"
}

distributed() {  # distributed PROCESSES MODE SECONDS EXTRA…: the NEAT steps under torchrun, DDP or FSDP2 as the trainer wraps them
  local procs=$1 mode=$2 limit=$3
  shift 3
  part "NEAT steps, $procs processes, $mode" "$limit" "$PY" -m torch.distributed.run --nproc-per-node "$procs" --master-port $((29500 + RANDOM % 500)) \
    benchmarks/train_step.py --distributed "$mode" --losses rrhf,dpo --json "$OUT/train_$mode.json" "$@"
}

if ! VERSIONS=$("$PY" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)'); then
  echo "gpu_check: $PY cannot import torch and transformers (set PYTHON=…)" >&2
  exit 2
fi
echo "gpu_check: mode $MODE, python $VERSIONS, out $OUT"
if [ "$MODE" = cpu ]; then
  TINY=(--shape tiny --length 32 --prompts 2 --steps 2 --warmup 1 --threads 1)
  part "trainer steps, tiny model, CPU float32, eager" 120 "$PY" benchmarks/train_step.py "${TINY[@]}" --losses rrhf,pro,dpo --json "$OUT/train_eager.json"
  part "scorers and perplexity, CPU" 180 "$PY" benchmarks/gpu_scorers_check.py --cpu --json "$OUT/scorers.json"
  distributed 2 ddp 120 "${TINY[@]}"
  distributed 2 fsdp 120 "${TINY[@]}"
else
  GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
  if [ "${GPUS:-0}" -lt 1 ]; then
    echo "no CUDA device visible to torch (run with --cpu for the smoke run)"
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  part "NEAT steps vs SFT, qwen2-0.5b shape, bf16, eager" 90 "$PY" benchmarks/train_step.py --gpu --losses rrhf,pro,dpo --json "$OUT/train_eager.json"
  part "NEAT steps vs SFT, qwen2-0.5b shape, bf16, torch.compile" 180 "$PY" benchmarks/train_step.py --gpu --compile --losses rrhf,pro,dpo \
    --json "$OUT/train_compiled.json"
  part "scorers and perplexity on CUDA vs CPU float32" 90 "$PY" benchmarks/gpu_scorers_check.py --json "$OUT/scorers.json"
  if [ "$GPUS" -gt 1 ]; then
    distributed "$GPUS" ddp 60 --gpu --steps 3
    distributed "$GPUS" fsdp 60 --gpu --steps 3
  else
    echo "== DDP / FSDP2: skipped (1 GPU)"
  fi
fi

echo "== summary ($OUT)"
"$PY" - "$OUT" <<'SUMMARY'
import json, sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("train_*.json")):
    report = json.loads(path.read_text())
    print(f"{path.stem}: {report['device']} x{report['world']} {report['dtype']}{' compiled' if report['compiled'] else ''}, "
          f"{report['params'] / 1e6:.0f}M params, {report['tokens_per_step']} tokens/step, peak {report['peak_tflops'] or 'unknown'} TFLOP/s")
    for name, side in report["sides"].items():
        mfu = f", MFU {side['mfu'] * 100:.1f}%" if side.get("mfu") is not None else ""
        ratio = f", {side['ratio_to_sft']:.2f}x SFT" if "ratio_to_sft" in side else ""
        print(f"  {name:>9}: {side['tokens_per_s']:,.0f} tokens/s{mfu}{ratio}")
scorers = Path(sys.argv[1]) / "scorers.json"
if scorers.is_file():
    report = json.loads(scorers.read_text())
    print("scorers: " + ", ".join(f"{name} {'ok' if check['ok'] else 'MISMATCH'}" for name, check in report["checks"].items()))
SUMMARY
if [ $failures -ne 0 ]; then
  echo "gpu_check: $failures part(s) FAILED"
  exit 1
fi
echo "gpu_check: all parts passed"
