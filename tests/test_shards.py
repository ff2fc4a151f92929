"""Sharded runs: N processes on one run folder, then `neat-data merge` gives exactly the single-process rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import REPO, write_jsonl

from neat_data.cli import cli
from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.runfolder import RunLock, ShardedTable
from neat_data.core.schemas import GENERATIONS, SCORED
from neat_data.core.shards import ShardRun, ShardSpec, shard_of
from neat_data.engines.base import Sampling
from neat_data.scorers.python_fn import PythonScorer
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.stages.merge import run_merge
from neat_data.stages.score import ScoreConfig, run_score
from neat_data.testing.recording_backend import RecordingBackend

GENERATE = [
    "--pairs",
    "harmless,helpful",
    "--model",
    "served",
    "--backend",
    "openai",
    "--num-pos",
    "2",
    "--num-neg",
    "1",
    "--num-neutral",
    "1",
    "--max-tokens",
    "8",
    "--flush-every",
    "5",
    "--no-progress",
]


def length_score(prompts: list, responses: list[str]) -> list[float]:
    """A scorer for the tests: deterministic, differs between responses."""
    return [float(len(text)) for text in responses]


@pytest.fixture
def many_prompts(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question number {i}: how do I do thing {i}?"} for i in range(30)])


def rows_by_key(table) -> dict[str, dict]:
    rows = table.to_pylist()
    assert len({r["key"] for r in rows}) == len(rows), "duplicate keys"
    return {r["key"]: r for r in rows}


def test_every_prompt_lands_in_exactly_one_shard():
    ids = [f"{i:016x}" for i in range(2000)]
    for n in (1, 2, 3, 7):
        owners = [[i for i in range(n) if ShardSpec(n, i).owns(pid)] for pid in ids]
        assert all(len(o) == 1 for o in owners)
        sizes = [sum(o == [i] for o in owners) for i in range(n)]
        assert min(sizes) > 0.7 * len(ids) / n  # a hash, not a remainder: no shard is starved
    assert shard_of("abc", 5) == shard_of("abc", 5)


def test_three_shard_processes_and_merge_equal_one_process(fake_server, many_prompts: Path, tmp_path: Path):
    server = fake_server(latency=0.01)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    base = ["generate", "--prompts", str(many_prompts), "--base-url", server.url, *GENERATE]
    assert CliRunner().invoke(cli, [*base, "--out", str(single)]).exit_code == 0
    env = {"OPENAI_API_KEY": "x", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "neat_data.cli", *base, "--out", str(sharded), "--num-shards", "3", "--shard-index", str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]  # all at once: they must not clash on locks, part names or the manifest
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert "generations/shard-0000" in out
    manifest = json.loads((sharded / "manifest.json").read_text())["stages"]["generate"]
    assert manifest["shards"]["num_shards"] == 3 and all(manifest["shards"]["done"][str(i)]["finished"] for i in range(3))
    assert not manifest["finished"]
    expected = rows_by_key(ShardedTable(single / "generations", GENERATIONS).read())
    assert len(expected) == 30 * 4
    before_merge = rows_by_key(ShardedTable(sharded / "generations", GENERATIONS).read())  # what score/rank read
    assert before_merge == expected

    merged = CliRunner().invoke(cli, ["merge", str(sharded)])
    assert merged.exit_code == 0, merged.output
    assert "merged 3 shards → 120 rows" in merged.output
    assert sorted(p.name for p in (sharded / "generations").iterdir()) == ["part-000000.parquet"]  # the normal layout
    assert rows_by_key(pq.read_table(sharded / "generations")) == expected
    manifest = json.loads((sharded / "manifest.json").read_text())["stages"]["generate"]
    assert manifest["finished"] and manifest["merged"] and manifest["rows"] == 120
    again = CliRunner().invoke(cli, ["merge", str(sharded)])
    assert again.exit_code == 0 and "already merged" in again.output


def test_score_shards_and_merge_equal_one_score_run_including_the_negative_floor(many_prompts: Path, tmp_path: Path):
    config = GenerateConfig(
        prompts=str(many_prompts), model="fake-model", out=tmp_path / "a", num_pos=1, num_neg=1, sampling=Sampling(max_tokens=8, seed=1)
    )
    run_generate(config, backend=RecordingBackend(), progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    scorer = PythonScorer("python:test_shards:length_score")
    run_score(ScoreConfig(run=tmp_path / "a", scorer=scorer.name, negative_score="floor"), scorer=scorer, progress=False)
    sizes = []
    for index in (2, 0, 1):  # order does not matter
        summary = run_score(
            ScoreConfig(run=tmp_path / "b", scorer=scorer.name, negative_score="floor", flush_every=4),
            shard=ShardSpec(3, index),
            scorer=scorer,
            progress=False,
        )
        sizes.append(summary.rows)
    assert sum(sizes) == 60 and min(sizes) > 0
    run_merge(tmp_path / "b")
    single = rows_by_key(ShardedTable(tmp_path / "a" / "scored", SCORED).read())
    merged = rows_by_key(ShardedTable(tmp_path / "b" / "scored", SCORED).read())
    assert merged == single and len(merged) == 60
    assert {r["score"] for r in merged.values() if r["steering"] == "neg"} == {
        min(r["raw_score"] for r in merged.values() if r["steering"] == "pos") - 1.0
    }


def test_missing_or_unfinished_shard_makes_merge_fail_with_one_line(many_prompts: Path, tmp_path: Path):
    out = tmp_path / "run"
    config = GenerateConfig(
        prompts=str(many_prompts), model="fake-model", out=out, num_pos=1, num_neg=1, flush_every=1, sampling=Sampling(max_tokens=8)
    )
    run_generate(config, shard=ShardSpec(3, 0), backend=RecordingBackend(), progress=False)
    with pytest.raises(RuntimeError, match="scripted crash"):
        run_generate(config, shard=ShardSpec(3, 1), backend=RecordingBackend(crash_after=3), progress=False)

    def merge_error() -> str:
        result = CliRunner().invoke(cli, ["merge", str(out)])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        return result.output

    assert "shard-00001-of-00003 has not finished" in merge_error() and "--num-shards 3 --shard-index 1" in merge_error()
    run_generate(config, shard=ShardSpec(3, 1), backend=RecordingBackend(), progress=False)  # resumes the crashed shard
    line = merge_error()
    assert "shard-00002-of-00003 was never started" in line and "nothing was merged" in line
    assert len(list((out / "generations").glob("shard-*/part-*.parquet"))) == 2  # untouched
    run_generate(config, shard=ShardSpec(3, 2), backend=RecordingBackend(), progress=False)
    shutil.copy(
        next((out / "generations" / ShardSpec(3, 0).name).glob("part-*")),
        out / "generations" / ShardSpec(3, 2).name / "part-000009.parquet",
    )
    assert "field 'key'" in merge_error() and "is also in shard-00000-of-00003" in merge_error()
    (out / "generations" / ShardSpec(3, 2).name / "part-000009.parquet").unlink()
    assert run_merge(out)[0].rows == 60
    assert (
        rows_by_key(pq.read_table(out / "generations")).keys() == rows_by_key(ShardedTable(out / "generations", GENERATIONS).read()).keys()
    )


def test_locks_a_second_copy_of_a_shard_and_whole_run_writers_are_refused_while_a_shard_runs(tmp_path: Path):
    with ShardRun(tmp_path, layout.GENERATIONS, ShardSpec(2, 1)):
        with pytest.raises(NeatError, match="already being written"):
            with ShardRun(tmp_path, layout.GENERATIONS, ShardSpec(2, 1)):
                pass
        with ShardRun(tmp_path, layout.GENERATIONS, ShardSpec(2, 0)):
            pass  # another shard is fine
        with pytest.raises(NeatError, match="--num-shards process is writing"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # free again once the shard is done
        pass


def test_bad_shard_options_and_split_changes_are_one_line_errors(many_prompts: Path, tmp_path: Path):
    base = [
        "generate",
        "--prompts",
        str(many_prompts),
        "--model",
        "m",
        "--backend",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--out",
        str(tmp_path / "run"),
    ]
    for extra, expected in (
        (["--shard-index", "0"], "field 'num_shards': --num-shards and --shard-index go together"),
        (["--num-shards", "3", "--shard-index", "3"], "field 'shard_index': must be between 0 and num_shards - 1 = 2"),
        (["--num-shards", "2", "--shard-index", "0", "--overwrite"], "field 'overwrite'"),
    ):
        result = CliRunner().invoke(cli, base + extra)
        assert result.exit_code == 2 and expected in result.output and result.output.count("\n") == 1, result.output
    config = GenerateConfig(prompts=str(many_prompts), model="fake-model", out=tmp_path / "run", num_pos=1, num_neg=0)
    run_generate(config, shard=ShardSpec(3, 0), backend=RecordingBackend(), progress=False)
    with pytest.raises(NeatError) as caught:
        run_generate(config, shard=ShardSpec(4, 0), backend=RecordingBackend(), progress=False)
    assert caught.value.field == "num_shards" and "split into 3 shards" in caught.value.message
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_a_shard_summary_counts_its_own_rows_and_requests(many_prompts: Path, tmp_path: Path):
    """The shard path is the stage itself: its summary and manifest record hold numbers (before, the shard copy of the
    stage stored `(rows, request_stats)` as `generated_rows`, printed `(8, {...}) new` and lost the request summary)."""
    from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings

    server = FakeOpenAIServer(ServerSettings()).start()
    try:
        config = GenerateConfig(
            prompts=str(many_prompts),
            model="served",
            backend="openai",
            base_url=server.url,
            out=tmp_path / "run",
            num_pos=1,
            num_neg=1,
            flush_every=4,
            sampling=Sampling(max_tokens=8),
        )
        spec = ShardSpec(3, 1)
        summary = run_generate(config, shard=spec, progress=False)
    finally:
        server.stop()
    from neat_data.core.prompts_in import load_prompts

    owned = [r for r in load_prompts(many_prompts).records if spec.owns(r.prompt_id)]
    mine = pq.read_table(tmp_path / "run" / "generations" / spec.name)
    assert summary.generated_rows == summary.total_rows == mine.num_rows == 2 * len(owned) and isinstance(summary.generated_rows, int)
    assert summary.requests["attempts"] == 2 * len(owned) and summary.requests["retries"] == 0  # one request per prompt × steering
    assert summary.folder == tmp_path / "run" / "generations" / spec.name
    record = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["generate"]["shards"]["done"]["1"]
    assert record["generated_rows"] == mine.num_rows and record["requests"]["attempts"] == summary.requests["attempts"]
    assert record["planned_rows"] == mine.num_rows and record["finished"] is True
    assert summary.lines()[0].startswith(f"{summary.folder}: {mine.num_rows} rows ({mine.num_rows} ok, 0 error; {mine.num_rows} new)")
    by_steering = summary.usage["by_stage"]["generate"]
    assert (
        set(by_steering) == {"pos", "neg"} and by_steering["pos"]["requests"] == len(owned) and by_steering["pos"]["completion_tokens"] > 0
    )
