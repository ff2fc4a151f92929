"""One result per stage (issue 26): a stage's command and `neat-data stage KIND CONFIG.json` (what `neat-data run`
starts for each planned stage) print the same lines from the same `StageResult`, and the runner shows those lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

OLD_RUN = Path(__file__).parent / "data" / "old_run"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parent.parent}:{Path(__file__).parent}"}  # the scorer module is a test
    return subprocess.run([sys.executable, "-m", "neat_data.cli", *args], capture_output=True, text=True, env=env)


def test_a_stage_command_and_the_round_runner_print_the_same_lines(tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    assert cli("score", str(run), "--scorer", "python:test_score:length_score", "--no-progress").returncode == 0
    for kind, config, command in (
        ("rank", {"run": str(run)}, ["rank", str(run)]),
        ("export", {"run": str(run), "format": "trl"}, ["export", str(run), "--format", "trl"]),
    ):
        by_command = cli(*command)
        assert by_command.returncode == 0, by_command.stderr
        config_path, summary = tmp_path / f"{kind}.json", tmp_path / f"{kind}.summary"
        config_path.write_text(json.dumps(config))
        by_runner = cli("stage", kind, str(config_path), "--summary", str(summary))
        assert by_runner.returncode == 0, by_runner.stderr
        lines = by_command.stdout.splitlines()
        assert lines and lines == by_runner.stdout.splitlines() == summary.read_text().splitlines(), kind
