"""Crash consistency: SIGKILL `generate` and `score` at seeded random moments (and mid-flush), re-run the same
command, and compare the folder with an uninterrupted run: every key once, no unreadable shard, the
manifest consistent.

Kill moments: after a random number of shards has appeared plus a random delay (anywhere in the run,
including the final compaction), or the instant a shard's temporary file appears (inside a flush, before
its rename). No test hook in the stage code: the runs are made slow enough by the server latency / scorer.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from conftest import served_generate_args
from harness import (
    assert_finished_run,
    assert_partial_run_is_sound,
    kill_when,
    read_shards,
    run_neat,
    shard_names,
    start_neat,
    write_prompts,
)

from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings
from neat_data.testing.recording_backend import RecordingBackend

TRIALS = 10  # per stage, of which FLUSH_TRIALS kill inside a flush
FLUSH_TRIALS = 3
SEED = 5


@pytest.fixture(scope="module")
def slow_server():
    server = FakeOpenAIServer(ServerSettings(latency=0.02, record=False)).start()
    yield server
    server.stop()


def kill_plan(rng: random.Random, trial: int, shards_expected: int) -> tuple[str, int, float]:
    """(mode, shards to wait for, extra delay) of one trial: random moments first, then mid-flush kills."""
    if trial >= TRIALS - FLUSH_TRIALS:
        return "flush", rng.randint(0, shards_expected - 2), 0.0
    return "random", rng.randint(0, shards_expected - 1), rng.uniform(0.0, 0.05)


def crash_and_resume(
    args: list[str],
    run: Path,
    table: str,
    stage: str,
    reference: dict,
    trials_log: list,
    *,
    mode: str,
    after_shards: int,
    delay: float,
    unfinished_columns: tuple[str, ...] = (),
) -> None:
    folder = run / table

    def ready() -> bool:
        if len(shard_names(folder)) < after_shards:
            return False
        return mode == "random" or any(folder.glob(".part-*.tmp"))  # flush: a shard is being written right now

    process = start_neat(*args)
    killed = kill_when(process, ready, jitter=delay)
    left_temp = any(folder.glob(".part-*.tmp"))
    survived = assert_partial_run_is_sound(run, table, reference, unfinished_columns=unfinished_columns)
    resumed = run_neat(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_finished_run(run, table, stage, reference)
    trials_log.append({"killed": killed, "mid_flush": left_temp, "rows_before": survived})


@pytest.mark.slow
def test_generate_killed_at_random_moments_resumes_exactly_once(slow_server, tmp_path: Path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)

    def args(out: Path) -> list[str]:
        return served_generate_args(prompts, slow_server.url, out, max_concurrency=4, flush_every=2, max_tokens=8)

    finished = run_neat(*args(tmp_path / "reference"))
    assert finished.returncode == 0, finished.stderr
    reference = {row["key"]: row for row in read_shards(tmp_path / "reference" / "generations")}
    assert len(reference) == 80
    rng, log = random.Random(SEED), []
    for trial in range(TRIALS):
        mode, after, delay = kill_plan(rng, trial, 80 // 2)
        run = tmp_path / f"trial-{trial}"
        crash_and_resume(args(run), run, "generations", "generate", reference, log, mode=mode, after_shards=after, delay=delay)
    report(log, "generate")


@pytest.mark.slow
def test_score_killed_at_random_moments_resumes_exactly_once(tmp_path: Path):
    generated = tmp_path / "generated"
    run_generate(
        GenerateConfig(
            prompts=str(write_prompts(tmp_path / "prompts.jsonl", 30)),
            model="fake",
            out=generated,
            num_pos=2,
            num_neg=2,
            sampling=Sampling(max_tokens=8),
        ),
        backend=RecordingBackend(),
        progress=False,
    )

    def args(run: Path) -> list[str]:
        return ["score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--flush-every", "4", "--no-progress"]

    shutil.copytree(generated, tmp_path / "reference")
    finished = run_neat(*args(tmp_path / "reference"))
    assert finished.returncode == 0, finished.stderr
    reference = {row["key"]: row for row in read_shards(tmp_path / "reference" / "scored")}
    assert len(reference) == 120
    rng, log = random.Random(SEED), []
    for trial in range(TRIALS):
        mode, after, delay = kill_plan(rng, trial, 120 // 4)
        run = tmp_path / f"trial-{trial}"
        shutil.copytree(generated, run)
        # `negative_score` is filled in when the stage finishes (it needs every score for `floor`)
        crash_and_resume(
            args(run),
            run,
            "scored",
            "score",
            reference,
            log,
            mode=mode,
            after_shards=after,
            delay=delay,
            unfinished_columns=("negative_score",),
        )
    report(log, "score")


def report(log: list[dict], stage: str) -> None:
    killed = sum(entry["killed"] for entry in log)
    mid_flush = sum(entry["mid_flush"] for entry in log)
    print(
        f"\nFIGURES crash {stage}: {len(log)} trials passed, {killed} killed mid-run, {mid_flush} with a shard mid-write, "
        f"rows kept before resume {[entry['rows_before'] for entry in log]}"
    )
    assert killed >= TRIALS - 1, "the kills must land while the stage runs"
    assert mid_flush >= 1, "at least one kill must land inside a shard flush"
