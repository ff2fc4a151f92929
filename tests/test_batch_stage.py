"""`neat-data generate --backend openai-batch` and `score --judge-backend openai-batch` through the stages: batch ids in
the run's manifest before any waiting, --no-wait leaves the stage unfinished with its rows pending, `batch status`
shows the batches, a killed generate is re-run and attaches (every row once, one submission per batch file), and the
cost line carries the batch discount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import REPO, write_jsonl

from neat_data.cli import cli
from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings

KEY = "sk-batch-stage-test-0123456789"


def prompts(folder: Path, count: int) -> Path:
    return write_jsonl(folder / "p.jsonl", [{"prompt": f"Question {i}: what is {i} + {i}?"} for i in range(count)])


def generate_args(server: FakeOpenAIServer, source: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate",
        "--prompts",
        str(source),
        "--model",
        "served",
        "--backend",
        "openai-batch",
        "--base-url",
        server.url,
        "--api-key-env",
        "BATCH_KEY",
        "--num-pos",
        "2",
        "--num-neg",
        "1",
        "--max-tokens",
        "8",
        "--batch-poll-interval",
        "0.05",
        "--batch-poll-max",
        "0.2",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_no_wait_submits_records_and_a_rerun_collects_every_row_once(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BATCH_KEY", KEY)
    server = FakeOpenAIServer(ServerSettings(batch_polls_per_state=2)).start()
    out = tmp_path / "run"
    try:
        args = generate_args(server, prompts(tmp_path, 12), out, "--batch-max-requests", "10", "--price-in", "1", "--price-out", "2")
        submitted = CliRunner().invoke(cli, [*args, "--no-wait"])
        assert submitted.exit_code == 0, submitted.output
        assert "36 rows waiting in 3 batches" in submitted.output, submitted.output
        manifest = json.loads((out / "manifest.json").read_text())
        records = manifest["batches"]["generate"]
        assert len(records) == 3 and all(r["batch_id"] for r in records)  # 24 requests → files of ≤ 10 lines
        assert manifest["stages"]["generate"]["finished"] is False and manifest["stages"]["generate"]["pending"]["rows"] == 36
        status = CliRunner().invoke(cli, ["batch", "status", str(out), "--api-key-env", "BATCH_KEY"])
        assert status.exit_code == 0 and status.output.count("batch_") >= 3, status.output
        collected = CliRunner().invoke(cli, args)
        assert collected.exit_code == 0, collected.output
        rows = pq.read_table(out / "generations").to_pylist()
        assert len(rows) == 36 == len({r["key"] for r in rows}) and all(r["status"] == "ok" for r in rows)
        assert all(r["backend"] == "openai-batch" and r["response"].startswith("reply ") for r in rows)
        assert sorted(server.batch_api.batch_submissions.values()) == [1, 1, 1]  # one submission per file, none twice
        entry = json.loads((out / "manifest.json").read_text())["stages"]["generate"]
        assert entry["finished"] is True and entry["usage"]["prices"]["discount"] == 0.5
        assert "batch discount 50%" in collected.output
        written = [p for p in out.rglob("*") if p.is_file()]
        assert not [p for p in written if KEY.encode() in p.read_bytes()] and KEY not in submitted.output + collected.output
    finally:
        server.stop()


@pytest.mark.slow
def test_a_generate_killed_between_submit_and_collect_attaches_on_rerun(tmp_path: Path):
    server = FakeOpenAIServer(ServerSettings(record=False, batch_seconds_per_state=2.0)).start()
    out = tmp_path / "run"
    env = {**os.environ, "BATCH_KEY": KEY, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "neat_data.cli", *generate_args(server, prompts(tmp_path, 400), out, "--batch-max-requests", "300")]
    try:
        first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:  # kill once both batches are created and journaled in the manifest, before any can finish
            assert first.poll() is None, first.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the batches were never journaled"
            try:
                records = json.loads((out / "manifest.json").read_text()).get("batches", {}).get("generate", [])
            except (FileNotFoundError, json.JSONDecodeError):
                records = []
            if len(records) == 3 and all(r.get("batch_id") for r in records):  # 800 requests in files of ≤ 300
                break
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert not list((out / "generations").glob("part-*.parquet"))  # nothing was collected before the kill
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        rows = pq.read_table(out / "generations").to_pylist()
        assert len(rows) == 1200 == len({r["key"] for r in rows}) and all(r["status"] == "ok" for r in rows)
        assert sorted(server.batch_api.batch_submissions.values()) == [1, 1, 1]  # attached: no second submission
    finally:
        server.stop()


def test_a_batch_judge_leaves_rows_pending_then_scores_them(tmp_path: Path, monkeypatch):
    from neat_data.engines.base import Sampling
    from neat_data.stages.generate.stage import GenerateConfig, run_generate
    from neat_data.testing.recording_backend import RecordingBackend

    monkeypatch.setenv("BATCH_KEY", KEY)
    run = tmp_path / "run"
    run_generate(
        GenerateConfig(prompts=str(prompts(tmp_path, 3)), model="fake", out=run, num_pos=1, num_neg=1, sampling=Sampling(max_tokens=8)),
        backend=RecordingBackend(),
        progress=False,
    )
    server = FakeOpenAIServer(ServerSettings(fixed_reply="Rating: 7", batch_polls_per_state=2)).start()
    try:
        args = [
            "score",
            str(run),
            "--scorer",
            "judge",
            "--model",
            "judge-model",
            "--judge-backend",
            "openai-batch",
            "--base-url",
            server.url,
            "--api-key-env",
            "BATCH_KEY",
            "--batch-poll-interval",
            "0.05",
            "--no-progress",
        ]
        first = CliRunner().invoke(cli, [*args, "--no-wait"])
        assert first.exit_code == 0 and "6 rows wait for the batch judge" in first.output, first.output
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["stages"]["score"]["finished"] is False and len(manifest["batches"]["score"]) == 1
        assert not (run / "scored").exists() or pq.read_table(run / "scored").num_rows == 0
        second = CliRunner().invoke(cli, args)
        assert second.exit_code == 0, second.output
        scored = pq.read_table(run / "scored").to_pylist()
        assert len(scored) == 6 and {r["score"] for r in scored} == {7.0}
        assert sum(server.batch_api.batch_submissions.values()) == 1
        assert json.loads((run / "manifest.json").read_text())["stages"]["score"]["usage"]["total"]["requests"] == 6
    finally:
        server.stop()
