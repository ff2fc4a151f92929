"""Helpers of the reliability suite: run the real CLI in a subprocess, fingerprint folders, check run folders.

A run folder is "consistent" when every shard with a final name opens, no two shards of the finished table
hold the same content key, the keys are exactly the expected ones, and the manifest agrees with the rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from conftest import REPO, write_jsonl

HERE = Path(__file__).resolve().parent


def neat_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "neat_data.cli", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a spawned CLI: this worktree's code first, and the suite's scorer module importable."""
    path = os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_neat(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(neat_command(*args), cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)


def start_neat(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The CLI in its own process group, so a SIGKILL takes the whole process (and its threads) at once."""
    return subprocess.Popen(
        neat_command(*args), cwd=REPO, env=env or subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], *, jitter: float = 0.0, timeout: float = 60.0) -> bool:
    """SIGKILL `process` `jitter` seconds after `ready()` first holds (polled every ~0.5 ms).

    Returns True if the kill landed while the process was still running (False: it had already finished)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.0005)
    if jitter:
        time.sleep(jitter)
    alive = process.poll() is None
    if alive:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return alive


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*.parquet")) if folder.is_dir() else []


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (relative path → digest): equal digests = nothing touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_shards(folder: Path) -> list[dict[str, Any]]:
    """Every row of every finished shard, without deduplication; a shard that does not open fails the test."""
    rows: list[dict[str, Any]] = []
    for name in shard_names(folder):
        try:
            rows += pq.read_table(folder / name).to_pylist()
        except Exception as error:  # any pyarrow error here means a half-written file under a final name
            raise AssertionError(f"unreadable shard {folder / name}: {error}") from None
    return rows


def assert_partial_run_is_sound(
    run: Path, table: str, reference: dict[str, dict[str, Any]], *, unfinished_columns: tuple[str, ...] = ()
) -> int:
    """After a kill: every shard opens, the manifest parses, and every row written equals the reference row
    of its key (no half rows, no wrong data) except `unfinished_columns`, which a stage only fills when it
    finishes. Returns how many distinct keys survived."""
    if (run / "manifest.json").exists():
        json.loads((run / "manifest.json").read_text())
    rows = read_shards(run / table)
    for row in rows:
        expected = {**reference[row["key"]], **{column: row[column] for column in unfinished_columns}}
        assert row == expected, f"row {row['key']} differs from the uninterrupted run"
    return len({row["key"] for row in rows})


def assert_finished_run(run: Path, table: str, stage: str, reference: dict[str, dict[str, Any]]) -> None:
    """After the re-run: each expected key exactly once across all shards, rows equal to the reference, no
    temp files left, and a manifest that says finished with the same row counts."""
    rows = read_shards(run / table)
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)), "a content key is stored twice"
    assert set(keys) == set(reference), f"missing {len(set(reference) - set(keys))}, unexpected {len(set(keys) - set(reference))}"
    assert all(row == reference[row["key"]] for row in rows)
    assert list(run.glob("*/.part-*.tmp")) == [], "a shard temp file was left behind"
    entry = json.loads((run / "manifest.json").read_text())["stages"][stage]
    assert entry["finished"] is True and entry["rows"] == len(reference)
    status_column = "status" if stage == "generate" else "score_status"
    assert sum(entry["counts"][status_column].values()) == len(reference)


def write_prompts(path: Path, count: int, *, words: int = 8) -> Path:
    """`count` distinct prompts of about `words` words each."""
    return write_jsonl(path, [{"prompt": f"question {i}: " + " ".join(f"w{i}x{j}" for j in range(words))} for i in range(count)])
