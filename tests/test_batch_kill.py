"""The batch backends survive kills. openai-batch: a process SIGKILLed between submitting its batches and collecting
them, or in the middle of an upload or of a batch create, is followed by a second process that answers every request
exactly once while the server counts one batch per input file — nothing is paid for twice. vllm-batch: a process
SIGKILLed while vLLM's run_batch works takes the engine with it, leaves no output, and the next run answers every
request once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from batch_worker import worker_requests
from conftest import REPO

from neat_data.engines.batch_journal import FileBatchJournal, load_records
from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings

WORKER = Path(__file__).with_name("batch_worker.py")


def start_worker(server: FakeOpenAIServer | Path, state: Path, out: Path, count: int, max_requests: int) -> subprocess.Popen:
    """The worker on openai-batch against `server`, or on vllm-batch with `server` = a local model folder."""
    target = ["--vllm-model", str(server)] if isinstance(server, Path) else ["--url", server.url]
    command = [
        sys.executable,
        str(WORKER),
        *target,
        "--state",
        str(state),
        "--out",
        str(out),
        "--count",
        str(count),
        "--max-requests",
        str(max_requests),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"worker ended before the kill point:\n{process.stdout.read().decode()[-3000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def finish(server: FakeOpenAIServer | Path, state: Path, out: Path, count: int, max_requests: int) -> dict:
    process = start_worker(server, state, out, count, max_requests)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output.decode()[-3000:]
    return json.loads(output.decode().strip().splitlines()[-1])


def assert_every_request_once(out: Path, count: int) -> None:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == count, f"{len(ids)} rows, {len(set(ids))} distinct, {count} requests"
    wanted = {r.id: f"reply {r.seed}: {r.messages[-1]['content']}" for r in worker_requests(count)}
    assert all(row["error"] is None and row["text"] == wanted[row["id"]] for row in rows)


def journal_of(state: Path) -> list:
    try:
        return load_records(FileBatchJournal(state / "journal.json"))
    except Exception:  # mid-write is impossible (atomic), but the file may not exist yet
        return []


@pytest.mark.slow
def test_10000_requests_killed_between_submit_and_collect_are_answered_once_with_one_submission_per_file(tmp_path: Path):
    count, per_file = 10_000, 2_500
    server = FakeOpenAIServer(ServerSettings(record=False, batch_seconds_per_state=3.0)).start()
    state, out = tmp_path / "batches", tmp_path / "rows.jsonl"
    try:
        first = start_worker(server, state, out, count, per_file)
        # the kill lands once all four batch ids are journaled, before any batch can have finished (3 s per state)
        kill_when(first, lambda: len(records := journal_of(state)) == 4 and all(r.batch_id for r in records))
        killed_with = journal_of(state)
        assert not out.exists() or out.read_text() == ""  # nothing was collected before the kill
        assert all(r.status == "validating" for r in killed_with) and not any(r.collected for r in killed_with)
        assert len(server.batch_api.batches) == 4
        started = time.monotonic()
        stats = finish(server, state, out, count, per_file)
        seconds = time.monotonic() - started
    finally:
        server.stop()
    assert stats["batch_attached_requests"] == count and stats.get("batch_submitted_requests", 0) == 0 and stats["pending"] == 0
    assert_every_request_once(out, count)
    api = server.batch_api
    assert len(api.batch_submissions) == 4 and set(api.batch_submissions.values()) == {1}  # one batch per input file
    assert api.uploads == 4 and len(api.submitted_custom_ids) == count and set(api.submitted_custom_ids.values()) == {1}
    assert all(r.status == "completed" and r.collected for r in journal_of(state))
    print(
        f"\nFIGURES batch kill: {count} requests in 4 files, killed after submit; re-run attached and collected in {seconds:.1f} s; "
        f"{api.polls} status polls, 1 submission per file"
    )


@pytest.mark.parametrize("moment", ["upload", "create"])
def test_a_kill_inside_an_upload_or_a_create_is_recovered_without_a_second_submission(tmp_path: Path, moment: str):
    """The server stored the file (or created the batch) but the client died before it heard the id: the next run
    finds it in files.list / batches.list instead of uploading or submitting again."""
    count, per_file = 20, 10
    delays = {"upload_delay": 30.0} if moment == "upload" else {"batch_create_delay": 30.0}
    server = FakeOpenAIServer(ServerSettings(record=False, **delays)).start()
    state, out = tmp_path / "batches", tmp_path / "rows.jsonl"
    try:
        first = start_worker(server, state, out, count, per_file)
        api = server.batch_api
        kill_when(first, (lambda: api.uploads == 1) if moment == "upload" else (lambda: len(api.batches) == 1))
        record = journal_of(state)[0]
        assert record.status == ("prepared" if moment == "upload" else "uploaded") and record.batch_id is None
        server.settings.upload_delay = server.settings.batch_create_delay = 0.0
        stats = finish(server, state, out, count, per_file)
    finally:
        server.stop()
    assert_every_request_once(out, count)
    assert api.uploads == 2 and len(api.batches) == 2 and set(api.batch_submissions.values()) == {1}
    assert set(api.submitted_custom_ids.values()) == {1} and stats["batches_submitted"] == (2 if moment == "upload" else 1)


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_vllm_batch_killed_mid_run_takes_its_engine_along_and_the_next_run_answers_each_request_once(tiny_model: Path, tmp_path: Path):
    pytest.importorskip("vllm")
    import psutil

    count = 6
    state, out = tmp_path / "batches", tmp_path / "rows.jsonl"
    first = start_worker(tiny_model, state, out, count, max_requests=count)
    engine: list[psutil.Process] = []

    def engine_started() -> bool:
        engine[:] = [c for c in psutil.Process(first.pid).children(recursive=True) if "run_batch" in " ".join(c.cmdline())]
        return bool(engine) and any(state.glob("*.log")) and next(state.glob("*.log")).stat().st_size > 0

    deadline = time.monotonic() + 300
    while not engine_started():
        assert first.poll() is None, f"worker ended before the kill point:\n{first.stdout.read().decode()[-3000:]}"
        assert time.monotonic() < deadline, "run_batch never started"
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)  # the worker only, not its process group: the engine must follow on its own
    first.wait()
    # at once — an engine start takes longer than this, so an engine that merely ran to its end would still be alive
    _, alive = psutil.wait_procs(engine, timeout=5)
    assert not alive, f"run_batch outlived its parent: {[p.pid for p in alive]}"
    log = next(state.glob("*.log"))
    size_at_kill = log.stat().st_size
    time.sleep(10)
    assert log.stat().st_size == size_at_kill  # nothing of that engine is still working

    [record] = journal_of(state)
    assert record.status == "running" and not record.collected
    assert not list(state.glob("*.output.jsonl")) and (not out.exists() or out.read_text() == "")
    # run_batch writes its output only at the end, so this kill left none; a kill at that very moment would leave a
    # half-written one under the dead process's id — it must not survive the re-run
    stale = state / f".{record.name}.output.{first.pid}.part"
    stale.write_text('{"custom_id": "row-000000", "respo', encoding="utf-8")

    stats = finish(tiny_model, state, out, count, count)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row["id"] for row in rows) == sorted(r.id for r in worker_requests(count))
    assert all(row["error"] is None and row["text"] for row in rows), rows
    assert stats["batches_submitted"] == 1 and stats["pending"] == 0
    [record] = journal_of(state)
    assert record.status == "completed" and record.collected
    assert not stale.exists() and not list(state.glob(".*.part")), list(state.iterdir())
