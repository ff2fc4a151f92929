"""The wheel carries the prompt libraries and recipes, and an installed neat-data finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_wheel_bundles_prompts_and_pipelines(tmp_path: Path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("neat_data-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "neat_data/_bundled/prompts/harmless.yaml" in names and "neat_data/_bundled/prompts/helpful.yaml" in names
    assert "neat_data/_bundled/pipelines/data/quickstart_prompts.jsonl" in names
    assert "neat_data/_bundled/prompts/eval/harmbench.yaml" in names and "neat_data/_bundled/prompts/eval/benign.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # -I: no cwd, no PYTHONPATH; the unpacked wheel goes first so it wins over the editable checkout
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import neat_data.core.pairs as p, neat_data.core.resources as r; "
        "print(r.bundled_dir('prompts')); print(len(p.load_library('harmless').pairs))"
    )
    run = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    folder, count = run.stdout.split()
    assert folder == str(site / "neat_data" / "_bundled" / "prompts") and int(count) >= 8
