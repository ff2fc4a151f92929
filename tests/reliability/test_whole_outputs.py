"""Reliability, round three (issue 25, class 5): an output is whole or absent. A disk that fills up during an export
leaves no lone file (before: a `dataset_info.json` naming a split that was never written), and an export already
there stays byte for byte as it was. The disk is a real small tmpfs (skipped where mounting is not permitted); the
bad-input kinds of the same class (a corrupt manifest before audit / export / rank) are in test_bad_input.py."""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_jsonl
from harness import folder_digest

from neat_data.cli import cli
from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

WORDS = [f"w{i}" for i in range(2000)]


def long_reply(messages: list, sample: int, seed: int) -> str:
    """A reply of 150 words drawn by the seed, so the export is far larger than the room left on the disk."""
    return " ".join(random.Random(f"{seed}-{sample}").choices(WORDS, k=150))


@pytest.fixture
def ranked_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}?"} for i in range(120)])
    config = GenerateConfig(prompts=str(prompts), model="fake", out=run, num_pos=1, num_neg=1, sampling=Sampling(max_tokens=200))
    run_generate(config, backend=RecordingBackend(reply=long_reply), progress=False)
    for args in (["score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress"], ["rank", str(run)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root, or CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)  # lazy: datasets may still map a file of it


def fill(disk: Path, leave: int = 16 * 1024) -> Path:
    """Fill `disk` up to `leave` bytes free: room for a small JSON file, not for a split."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - leave))
    return filler


def export(run: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["export", str(run), "--format", "llamafactory", "--out", str(out), *extra])


def test_a_full_disk_during_an_export_leaves_nothing(ranked_run: Path, small_disk: Path):
    out = small_disk / "llamafactory"
    manifest = folder_digest(ranked_run)
    filler = fill(small_disk)
    result = export(ranked_run, out)
    assert result.exit_code != 0, result.output
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"], "a file of the failed export was left behind"
    assert folder_digest(ranked_run) == manifest, "the manifest recorded an export that is not there"
    filler.unlink()
    result = export(ranked_run, out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["croissant.json", "dataset_info.json", "hf", "train.parquet"]


def test_a_full_disk_during_a_second_split_keeps_the_first_export_as_it_was(ranked_run: Path, small_disk: Path):
    out = small_disk / "llamafactory"
    assert export(ranked_run, out).exit_code == 0
    before = folder_digest(out)
    fill(small_disk)
    result = export(ranked_run, out, "--split", "test")
    assert result.exit_code != 0, result.output
    assert folder_digest(out) == before, "the first export changed (or a file of the second was left)"
    assert list(json.loads((out / "dataset_info.json").read_text())) == ["neat_train"]
