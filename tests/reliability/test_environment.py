"""Failures of the machine, not of neat-data: a full disk, a read-only run folder, `--out` a symbolic link to nothing,
a closed stdout pipe. Each is one line `error: <path>: <what>` and exit 2 — never "unexpected … (a bug in
neat-data?)" — and what was written before is whole; a closed pipe is quiet and the work is done all the same.

The disk and the read-only folder are real: a small tmpfs mounted for the test (skipped where mount is not permitted).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import served_generate_args, write_jsonl
from harness import neat_command, read_shards, run_neat, subprocess_env


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def prompts(folder: Path, count: int) -> Path:
    return write_jsonl(folder / "prompts.jsonl", [{"prompt": f"question {i} " + "words " * 40} for i in range(count)])


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_what_was_written(tmp_path: Path, fake_server):
    source, server = prompts(tmp_path, 2000), fake_server()
    with tmpfs(tmp_path / "disk", "256k") as disk:
        run = disk / "run"
        result = run_neat(*served_generate_args(source, server.url, run, max_tokens=8, flush_every=20))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stdout + result.stderr
        assert len(lines) == 1 and lines[0].startswith(f"error: {run}/") and lines[0].endswith(": No space left on device"), lines
        kept = read_shards(run / "generations")  # every shard with its final name opens
        assert kept and not [p for p in run.rglob(".*.tmp")]


def test_a_read_only_run_folder_is_one_line(tmp_path: Path):
    source = prompts(tmp_path, 2)
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        result = run_neat(*served_generate_args(source, "http://127.0.0.1:9/v1", folder / "run"))
    assert result.returncode == 2 and result.stderr == f"error: {folder / 'run'}: Read-only file system\n", result.stderr


def test_out_a_dangling_symlink_is_one_line(tmp_path: Path):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone" / "run")
    result = run_neat(*served_generate_args(prompts(tmp_path, 2), "http://127.0.0.1:9/v1", link))
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {link}: a symbolic link to '{tmp_path / 'gone' / 'run'}', which does not exist\n"


def test_a_closed_stdout_pipe_is_quiet_and_the_work_is_done(tmp_path: Path, fake_server):
    """`neat-data generate … | head -0`: the reader is gone before the summary; the rows are all written and the
    command exits with its own code, without a word on stderr."""
    server, run = fake_server(), tmp_path / "run"
    command = neat_command(*served_generate_args(prompts(tmp_path, 5), server.url, run, max_tokens=8))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(), text=True)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=180) == 0 and stderr == "", stderr
    rows = read_shards(run / "generations")
    assert len(rows) == 5 * 2 and all(row["status"] == "ok" for row in rows)
