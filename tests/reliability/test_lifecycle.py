"""Reliability, round three (issue 25, class 10): process lifecycle. SIGTERM to `neat-data run` — what `timeout`,
systemd or a scheduler sends to the main process — ends the stage it is running too (before: the stage was orphaned
and went on writing, and the re-run started a second one beside it), exits 143 with one line, records nothing, and
the re-run finishes the run whole. `train` and `evaluate` hold their output's lock: a second one on the same --out is
refused at once with the lock line (before: two trainers cleared and saved over each other's checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import write_jsonl
from harness import folder_digest, neat_command, run_neat, subprocess_env

from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings

LOCKED = "run folder is in use by another neat-data process (wait for it, or use another --out)"


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"it ended before {what}: " + process.stdout.read().decode(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.05)


def group_members(group: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    return members


def one_round_recipe(tmp_path: Path, tiny_model: Path, url: str) -> Path:
    """The smallest recipe: one round of 4 prompts on the fake server, a `python:` scorer, the tiny model trained."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}?"} for i in range(8)])
    recipe = {
        "name": "t",
        "out": str(tmp_path / "runs" / "t"),
        "model": str(tiny_model),
        "prompts": {"source": str(prompts), "heldout": 4, "per_round": 4},
        "rounds": 1,
        "generate": {"backend": "openai", "num_pos": 2, "num_neg": 2, "max_tokens": 8, "options": {"base_url": url}},
        "score": {"scorer": "python:reliability_scorers:slow_length"},
        "exports": ["ranked"],
        "train": {"lr": 1e-3, "epochs": 1, "prompts_per_batch": 2, "warmup_ratio": 0.0},
        "evaluate": {"backend": "openai", "max_tokens": 8, "options": {"base_url": url, "max_concurrency": 1}},
    }
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def run_until_its_first_stage_writes(recipe: Path, run_dir: Path, *, rows: bool = True) -> tuple[subprocess.Popen, psutil.Process]:
    """`neat-data run` in a process group of its own (so that only it gets a signal, as from `kill PID`), once round
    0's evaluation has written rows (or, without `rows`, has started its folder); returns it and its stage's process."""
    run = subprocess.Popen(
        neat_command("run", str(recipe)), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    eval_dir = run_dir / "round_00" / "eval"
    if rows:
        wait_for(lambda: any((eval_dir / "generations").glob("part-*.parquet")), run, "round 0's evaluation wrote rows")
    else:
        wait_for((eval_dir / "manifest.json").is_file, run, "round 0's evaluation started")
    (stage,) = psutil.Process(run.pid).children()
    return run, stage


def assert_gone(stage: psutil.Process) -> None:
    try:
        stage.wait(timeout=60)  # a deadline for a process to end, not a measure of speed
    except psutil.TimeoutExpired:
        raise AssertionError("the stage outlived the run") from None
    assert group_members(stage.pid) == [], "a process the stage started is still running"


@pytest.mark.slow  # two runs of a one-round recipe: about a minute on two cores
def test_sigterm_to_run_ends_its_stage_and_the_rerun_finishes_whole(tmp_path: Path, tiny_model: Path):
    server = FakeOpenAIServer(ServerSettings(latency=0.3, record=False)).start()
    try:
        recipe, run_dir = one_round_recipe(tmp_path, tiny_model, server.url), tmp_path / "runs" / "t"
        run, stage = run_until_its_first_stage_writes(recipe, run_dir)
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=120)[0].decode()
        lines = [line for line in output.splitlines() if line.startswith("error:")]
        assert run.returncode == 128 + signal.SIGTERM, output
        assert lines == [
            f"error: {run_dir / 'round_00' / 'configs' / 'evaluate.json'}: round 0 · evaluate: stopped by SIGTERM, and the "
            "stage with it; run the same command again to resume (finished stages are kept)"
        ], output
        assert_gone(stage)
        assert json.loads((run_dir / "manifest.json").read_text()).get("rounds", {}) == {}  # nothing recorded as finished

        again = run_neat("run", str(recipe), timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        manifest = json.loads((run_dir / "manifest.json").read_text())
        stages = {"evaluate"}, {"generate", "score", "rank", "audit", "export-ranked", "train", "evaluate"}
        assert [set(manifest["rounds"][str(k)]) for k in (0, 1)] == list(stages)
        assert all(entry["finished"] for round_ in manifest["rounds"].values() for entry in round_.values())
        evaluated = pq.read_table(run_dir / "round_00" / "eval" / "generations").to_pylist()
        assert len({row["key"] for row in evaluated}) == len(evaluated)  # each row once, across the stop
        assert len({row["prompt_id"] for row in evaluated}) == 4 and all(row["status"] == "ok" for row in evaluated)
        assert (run_dir / "round_01" / "model" / "neat_train.json").is_file()
    finally:
        server.stop()


def test_a_stage_dies_with_its_run_even_by_sigkill(tmp_path: Path, tiny_model: Path):
    """SIGKILL cannot be passed on: the stage learns of its run's death from the kernel (and ends its own group). Each
    answer takes 100 s, so a stage left alone would outlive the deadline (before: it went on)."""
    server = FakeOpenAIServer(ServerSettings(latency=100, record=False)).start()
    try:
        recipe, run_dir = one_round_recipe(tmp_path, tiny_model, server.url), tmp_path / "runs" / "t"
        run, stage = run_until_its_first_stage_writes(recipe, run_dir, rows=False)
        run.kill()
        run.wait()
        assert_gone(stage)
    finally:
        server.stop()


def ranked_export(folder: Path) -> Path:
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "prompt_id": f"p{i}",
            "responses": ["A careful, kind answer.", "A rude answer."],
            "scores": [1.0, 0.0],
            "steering": ["pos", "neg"],
        }
        for i in range(8)
    ]
    path = folder / "ranked.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_second_train_on_the_same_out_is_refused(tmp_path: Path, tiny_model: Path):
    data, out = ranked_export(tmp_path), tmp_path / "model"
    args = ["train", str(data), "--model", str(tiny_model), "--out", str(out), "--prompts-per-batch", "1", "--threads", "1"]
    first = subprocess.Popen(
        neat_command(*args, "--epochs", "500"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        partial = tmp_path / "model.partial" / "train_log.jsonl"
        wait_for(partial.is_file, first, "the first trainer took a step")
        before = folder_digest(tmp_path / "model.partial")
        second = run_neat(*args, "--epochs", "1")
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert second.stderr.strip().splitlines()[-1] == f"error: {out}: {LOCKED}"
        assert not out.exists()  # the second saved nothing
        after = folder_digest(tmp_path / "model.partial")
        assert set(before) <= set(after)  # the first one's log was not cleared (it only grows)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_a_second_evaluate_on_the_same_out_is_refused(tmp_path: Path):
    """The first evaluate is generating its suite (before: eval/ itself was unlocked then, and the second one rewrote
    eval/'s manifest before a lock stopped it at the suite's folder)."""
    from click.testing import CliRunner

    from neat_data.cli import cli

    server = FakeOpenAIServer(ServerSettings(latency=0.3, record=False)).start()
    try:
        prompts = write_jsonl(tmp_path / "heldout.jsonl", [{"prompt": f"Question {i}?"} for i in range(4)])
        write_jsonl(tmp_path / "suite.jsonl", [{"prompt": f"Suite question {i}?"} for i in range(3000)])
        suite = tmp_path / "suite.yaml"
        suite.write_text(yaml.safe_dump({"name": "slow", "kind": "benign", "source": str(tmp_path / "suite.jsonl"), "metrics": ["length"]}))
        eval_dir = tmp_path / "eval"
        args = ["evaluate", str(eval_dir), "--model", "fake", "--heldout", str(prompts), "--backend", "openai", "--base-url", server.url]
        args += ["--scorer", "python:reliability_scorers:slow_length", "--suites", str(suite)]
        first = subprocess.Popen(
            neat_command(*args), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for((eval_dir / "suites" / "slow" / "manifest.json").is_file, first, "the first evaluated its suite")
            before = {name: digest for name, digest in folder_digest(eval_dir).items() if not name.startswith("suites/")}
            second = CliRunner().invoke(cli, args)
            assert second.exit_code == 2, second.output
            assert second.output.strip().splitlines() == [f"error: {eval_dir}: {LOCKED}"]
            assert {name: digest for name, digest in folder_digest(eval_dir).items() if not name.startswith("suites/")} == before
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    finally:
        server.stop()
