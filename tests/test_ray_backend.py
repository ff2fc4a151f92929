"""`--backend ray`: Ray Data actors give the single-process rows (same keys, seeds, schema); failures are rows.

Local Ray on 2 CPUs. The cheap tests put our recording backend inside the actors (the real Ray path:
dataset, map_batches, actor pool, streaming back); the slow one runs the real CLI with vLLM on the tiny
model and compares with the single-process engine.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, write_jsonl

from neat_data.core.errors import NeatError
from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
from neat_data.engines.ray_backend import RayBackend  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module; workers import this checkout's neat_data and tests/."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}},
    )
    yield
    ray.shutdown()


def fails_on_france(messages: list[dict[str, str]]) -> str | None:
    return "boom: server said no" if "France" in messages[-1]["content"] else None


def make_config(prompts: Path, out: Path) -> GenerateConfig:
    return GenerateConfig(
        prompts=str(prompts),
        model="fake-model",
        out=out,
        num_pos=2,
        num_neg=1,
        num_neutral=1,
        sampling=Sampling(max_tokens=8, seed=3),
        flush_every=3,
    )


def rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(out / "generations").to_pylist()
    assert len({r["key"] for r in table}) == len(table)
    return {r["key"]: r for r in table}


def test_ray_actors_write_the_single_process_rows_and_a_failing_row_is_an_error_row(local_ray, prompts_file: Path, tmp_path: Path):
    run_generate(make_config(prompts_file, tmp_path / "single"), backend=RecordingBackend(fail_when=fails_on_france), progress=False)
    backend = RayBackend("fake-model", functools.partial(RecordingBackend, fail_when=fails_on_france), actors=2, batch_size=2)
    summary = run_generate(make_config(prompts_file, tmp_path / "ray"), backend=backend, progress=False)
    single, distributed = rows(tmp_path / "single"), rows(tmp_path / "ray")
    assert summary.counts["status"] == {"ok": 12, "error": 4}
    assert distributed.keys() == single.keys() and len(distributed) == 16
    assert {r["backend"] for r in distributed.values()} == {"ray"}
    # everything else identical (the settings hash names the backend that made the row, so it differs with it)
    assert all({**row, "backend": "fake", "settings_hash": single[key]["settings_hash"]} == single[key] for key, row in distributed.items())
    assert (
        len({r["settings_hash"] for r in distributed.values()})
        == 1
        != len({r["settings_hash"] for r in [*distributed.values(), *single.values()]})
    )
    errors = [r for r in distributed.values() if r["status"] == "error"]
    assert len(errors) == 4 and all(r["error"] == "boom: server said no" and "France" in r["prompt"][-1]["content"] for r in errors)


def test_an_actor_that_raises_mid_job_gives_error_rows_and_retry_errors_fills_them(local_ray, prompts_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    crashing = RayBackend("fake-model", functools.partial(RecordingBackend, crash_after=4), actors=1, batch_size=4)
    summary = run_generate(make_config(prompts_file, out), backend=crashing, progress=False)
    assert summary.total_rows == 16  # nothing dropped
    errors = [r for r in rows(out).values() if r["status"] == "error"]
    assert errors and all(r["error"] == "ray actor: RuntimeError: scripted crash" for r in errors)
    healthy = RayBackend("fake-model", RecordingBackend, actors=1, batch_size=4)
    run_generate(make_config(prompts_file, out), backend=healthy, retry_errors=True, progress=False)
    assert [r["status"] for r in rows(out).values()] == ["ok"] * 16


def broken_engine() -> RecordingBackend:
    raise OSError("model folder /nope has no config.json")


def test_an_engine_that_cannot_start_is_one_clear_error(local_ray, prompts_file: Path, tmp_path: Path):
    with pytest.raises(NeatError) as caught:
        run_generate(make_config(prompts_file, tmp_path / "run"), backend=RayBackend("fake-model", broken_engine), progress=False)
    assert caught.value.field == "backend" and "OSError: model folder /nope has no config.json" in caught.value.message


@pytest.mark.vllm
@pytest.mark.slow
def test_cli_ray_backend_on_the_tiny_model_matches_the_single_process_engine(vllm_llm, tiny_model: Path, tmp_path: Path):
    from neat_data.engines.vllm_backend import VLLMBackend

    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"Tell me about topic {i}."} for i in range(5)] + [{"prompt": "word " * 1500}]
    )  # longer than the context: an error row, not a dead job
    options = [
        "--prompts",
        str(prompts),
        "--model",
        str(tiny_model),
        "--num-pos",
        "1",
        "--num-neg",
        "1",
        "--max-tokens",
        "8",
        "--max-model-len",
        "1024",
        "--kv-cache-gb",
        "0.25",
        "--no-progress",
    ]
    config = GenerateConfig(
        prompts=str(prompts),
        model=str(tiny_model),
        out=tmp_path / "single",
        num_pos=1,
        num_neg=1,
        max_model_len=1024,
        sampling=Sampling(max_tokens=8),
    )
    run_generate(config, backend=VLLMBackend(str(tiny_model), model_label=str(tiny_model), llm=vllm_llm), progress=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}  # a fresh local Ray (2 CPUs here), started by our code
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "neat_data.cli",
            "generate",
            *options,
            "--backend",
            "ray",
            "--ray-actors",
            "1",
            "--out",
            str(tmp_path / "ray"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "12 rows (10 ok, 2 error" in done.stdout
    single, distributed = rows(tmp_path / "single"), rows(tmp_path / "ray")
    assert distributed.keys() == single.keys() and len(distributed) == 12
    assert {r["backend"] for r in distributed.values()} == {"ray"}
    for key, row in distributed.items():
        assert (row["status"], row["seed"], row["prompt_id"], row["steering"]) == (
            single[key]["status"],
            single[key]["seed"],
            single[key]["prompt_id"],
            single[key]["steering"],
        )
    errors = [r for r in distributed.values() if r["status"] == "error"]
    assert len(errors) == 2 and all(r["error"].startswith("prompt too long") for r in errors)
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["stages"]["generate"]["config"]["backend"] == "ray"


def test_ray_scoring_gives_the_single_process_scores_and_a_failing_batch_becomes_error_rows(local_ray, prompts_file: Path, tmp_path: Path):
    import shutil

    from neat_data.stages.score import ScoreConfig, run_score

    generated = tmp_path / "generated"
    run_generate(
        GenerateConfig(prompts=str(prompts_file), model="fake", out=generated, num_pos=2, num_neg=2, sampling=Sampling(max_tokens=8)),
        backend=RecordingBackend(),
        progress=False,
    )
    for name in ("single", "ray", "raising"):
        shutil.copytree(generated, tmp_path / name)
    run_score(ScoreConfig(run=tmp_path / "single", scorer="python:ray_scorers:length_or_text"), progress=False)
    summary = run_score(
        ScoreConfig(run=tmp_path / "ray", scorer="python:ray_scorers:length_or_text", ray_actors=2, ray_batch_size=3, flush_every=8),
        progress=False,
    )
    single = {r["key"]: r for r in pq.read_table(tmp_path / "single" / "scored").to_pylist()}
    distributed = {r["key"]: r for r in pq.read_table(tmp_path / "ray" / "scored").to_pylist()}
    assert summary.counts["score_status"] == {"ok": 12, "error": 4} and set(single) == set(distributed)
    for key, row in single.items():
        assert (distributed[key]["score"], distributed[key]["score_status"], distributed[key]["score_error"]) == (
            row["score"],
            row["score_status"],
            row["score_error"],
        )
    # an exception inside an actor: its batch's rows are error rows, the others are scored, the stage finishes
    summary = run_score(
        ScoreConfig(run=tmp_path / "raising", scorer="python:ray_scorers:raises_on_france", ray_actors=2, ray_batch_size=1), progress=False
    )
    raising = pq.read_table(tmp_path / "raising" / "scored").to_pylist()
    assert summary.counts["score_status"] == {"ok": 12, "error": 4}
    for row in raising:
        if "France" in row["prompt"][-1]["content"]:
            assert row["score_status"] == "error" and row["score_error"] == "ray actor: the scorer raised ValueError: boom on France"
        else:
            assert row["score"] == float(len(row["response"]))
