"""Reliability, round three (issue 25, class 2): no stage consumes unfinished or stale input silently.

Each stage records in manifest.json the digests of the tables it read and wrote (neat_data/core/lineage.py); score,
rank, export, audit and merge refuse input that is unfinished, or older than the table it was computed from, with one
line naming the run folder and the command to run, and write nothing. Each test failed before the fix (every command
here exited 0 on the partial or pre-redo data); the bad-input kinds of the same class are in test_bad_input.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import write_jsonl
from harness import folder_digest

from neat_data.cli import cli
from neat_data.core.manifest import edit_manifest
from neat_data.core.runfolder import ShardedTable
from neat_data.core.schemas import GENERATIONS, SCORED
from neat_data.core.shards import ShardSpec
from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

SCORE = ("--scorer", "python:reliability_scorers:slow_length", "--no-progress")


def config(folder: Path, **changes) -> GenerateConfig:
    prompts = write_jsonl(folder / "p.jsonl", [{"prompt": f"Question {i}: what is {i} squared?"} for i in range(6)])
    values = {"prompts": str(prompts), "model": "fake", "out": folder / "run", "num_pos": 2, "num_neg": 2, "flush_every": 2}
    return GenerateConfig(**{**values, "sampling": Sampling(max_tokens=8), **changes})


def killed(generate: GenerateConfig, after: int) -> None:
    """A generate process that dies after `after` requests (the rows flushed so far stay, as after a SIGKILL)."""
    with pytest.raises(RuntimeError, match="scripted crash"):
        run_generate(generate, backend=RecordingBackend(crash_after=after), progress=False)


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def ok(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def refused(folder: Path, *args: str) -> str:
    """The command exits 2 with one `error:` line and changes no file under `folder`; returns the line."""
    before = folder_digest(folder)
    result = invoke(*args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert folder_digest(folder) == before, "a refused command changed a file"
    return lines[0]


def finished(folder: Path) -> Path:
    """generate → score → rank → export trl, each finished."""
    run_generate(config(folder), backend=RecordingBackend(), progress=False)
    run = folder / "run"
    ok("score", run, *SCORE)
    ok("rank", run)
    ok("export", run, "--format", "trl")
    return run


def test_a_killed_generate_is_refused_by_score_and_nothing_is_recorded(tmp_path: Path):
    """Before: score scored the third that was there, exited 0 and recorded itself finished."""
    killed(config(tmp_path), after=4)  # 4 of 12 requests: 8 of 24 rows
    run = tmp_path / "run"
    assert ShardedTable(run / "generations", GENERATIONS).read().num_rows == 8
    line = refused(tmp_path, "score", run, *SCORE)
    assert line == (
        f"error: {run}: generations are unfinished (generate was stopped, failed or is still running): run "
        f"`neat-data generate … --out {run}` again to finish them first"
    )
    assert not (run / "scored").exists() and "score" not in json.loads((run / "manifest.json").read_text())["stages"]
    run_generate(config(tmp_path), backend=RecordingBackend(), progress=False)  # the same command again finishes it
    assert "24 rows (24 newly scored)" in ok("score", run, *SCORE)


def test_a_killed_later_generate_pass_is_refused_by_every_stage_after_it(tmp_path: Path):
    """A finished run, then `generate --redo` killed part-way: score, rank, export and audit all stop."""
    run = finished(tmp_path)
    killed(config(tmp_path, redo=["steering=neg"], sampling=Sampling(max_tokens=8, seed=7)), after=2)
    unfinished = "generations are unfinished (generate was stopped, failed or is still running)"
    for command in (["score", run, *SCORE], ["rank", run], ["export", run, "--format", "trl"], ["audit", run]):
        assert unfinished in refused(tmp_path, *command), command


def test_rank_after_redo_without_score_says_the_scores_are_stale_and_the_export_gets_the_new_texts(tmp_path: Path):
    """Before: rank after `generate --redo` (no score) exported the pre-redo texts with their old scores, exit 0."""
    run = finished(tmp_path)
    old = {r["key"]: r["response"] for r in pq.read_table(run / "generations").to_pylist()}
    run_generate(
        config(tmp_path, redo=["steering=neg"], sampling=Sampling(max_tokens=8, seed=7)), backend=RecordingBackend(), progress=False
    )
    new = {r["key"]: r["response"] for r in pq.read_table(run / "generations").to_pylist()}
    changed = {old[key] for key in old if old[key] != new[key]}
    assert changed
    stale = (
        f"error: {run}: scores are stale (the generations changed after score read them): run "
        f"`neat-data score {run} {' '.join(SCORE)}` first"
    )
    for command in (["rank", run], ["export", run, "--format", "trl"], ["export", run, "--format", "kto"], ["audit", run]):
        assert refused(tmp_path, *command) == stale, command
    ok("score", run, *SCORE)
    assert refused(tmp_path, "export", run, "--format", "trl") == (
        f"error: {run}: ranked pairs are stale (the scores changed after rank read them): run `neat-data rank {run}` first"
    )
    ok("rank", run)
    ok("export", run, "--format", "trl")
    exported = pq.read_table(run / "export" / "trl" / "train.parquet").to_pylist()
    texts = {pair[side][0]["content"] for pair in exported for side in ("chosen", "rejected")}
    assert texts <= set(new.values()) and not texts & changed  # only texts generate holds now


def test_a_table_changed_after_its_stage_finished_is_refused(tmp_path: Path):
    """A scored row changed behind score's back (a part appended by hand, a copy from another run): rank stops."""
    run = finished(tmp_path)
    table = ShardedTable(run / "scored", SCORED)
    row = table.read().to_pylist()[0]
    table.append([{**row, "score": row["score"] + 100.0}])
    line = refused(tmp_path, "rank", run)
    assert line == (
        f"error: {run}: scored/ changed after score finished (edited, copied or written by another process?): run "
        f"`neat-data score {run} {' '.join(SCORE)}` first"
    )


def test_unfinished_scores_are_refused_by_rank(tmp_path: Path):
    """A score that failed part-way (its scorer raised) left its record unfinished: rank stops instead of ranking what
    that pass left."""
    run = finished(tmp_path)
    assert invoke("score", run, "--scorer", "python:reliability_scorers:leaks_its_key", "--overwrite", "--no-progress").exit_code == 2
    assert refused(tmp_path, "rank", run) == (
        f"error: {run}: scores are unfinished (score was stopped, failed or is still running): run "
        f"`neat-data score {run} --scorer python:reliability_scorers:leaks_its_key --no-progress` again to finish them first"
    )


def test_shards_score_reads_its_own_finished_shard_and_a_whole_run_score_waits_for_merge(tmp_path: Path):
    run = tmp_path / "run"
    run_generate(config(tmp_path), backend=RecordingBackend(), shard=ShardSpec(2, 0), progress=False)
    assert refused(tmp_path, "score", run, *SCORE) == (
        f"error: {run}: generations are unfinished (shard 1 of 2 has not finished): run `neat-data generate … --num-shards 2 "
        f"--shard-index 1` to finish it, then `neat-data merge {run}`, first"
    )
    ok("score", run, *SCORE, "--num-shards", "2", "--shard-index", "0")  # shard 0 of score needs shard 0 of generate only
    run_generate(config(tmp_path), backend=RecordingBackend(), shard=ShardSpec(2, 1), progress=False)
    assert refused(tmp_path, "rank", run).endswith(f"generations are in 2 shards, not merged yet: run `neat-data merge {run}` first")
    ok("score", run, *SCORE, "--num-shards", "2", "--shard-index", "1")
    ok("merge", run)
    ok("rank", run)  # merge recorded what each merged table is and what the scores were computed from


def test_runs_made_before_digests_still_work_and_their_finished_flags_still_count(tmp_path: Path):
    """Records without `reads`/`wrote` (an older neat-data) are unknown, not stale: rank, export and audit run as they
    did; an unfinished record is refused all the same (before the fix rank ranked it)."""
    run = finished(tmp_path)
    with edit_manifest(run) as manifest:
        for name, entry in manifest.stages.items():
            manifest.set_stage(name, {key: value for key, value in entry.entry().items() if key not in ("reads", "wrote")})
    ok("rank", run)
    ok("export", run, "--format", "trl")
    ok("audit", run)
    with edit_manifest(run) as manifest:
        manifest.stages["score"].finished = False
    assert "scores are unfinished (score was stopped, failed or is still running)" in refused(tmp_path, "rank", run)


def test_a_digest_depends_on_the_rows_not_on_how_they_are_chunked():
    import pyarrow as pa

    from neat_data.core.lineage import digest

    chunks = {"s": [["x", "yy", None], ["zzz"]], "f": [[1.0, None], [2.0, 3.0]], "l": [[["a"], None], [["b", "c"], []]]}
    table = pa.table({name: pa.chunked_array(parts) for name, parts in chunks.items()})
    for rows in (table, table.slice(1)):
        assert digest(rows, ["s", "f", "l"]) == digest(rows.combine_chunks(), ["s", "f", "l"])
    other = table.set_column(0, "s", pa.chunked_array([["x", "y", "y"], ["zzz"]]))  # the same bytes, split otherwise
    assert digest(other, ["s"]) != digest(table, ["s"])


def test_score_scores_what_generate_has_while_rows_wait_in_batches_and_rank_waits_for_them(tmp_path: Path, monkeypatch):
    """The one input a stage reads unfinished, by design: `score` while generate's batch rows are not collected scores
    the rows there and says how many wait (scoring is resumable); rank refuses until generate and score are done."""
    from test_batch_stage import generate_args, prompts

    from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings

    monkeypatch.setenv("BATCH_KEY", "sk-stale-input-test-0123456789")
    server = FakeOpenAIServer(ServerSettings(batch_polls_per_state=2)).start()
    run = tmp_path / "run"
    try:
        args = generate_args(server, prompts(tmp_path, 4), run)
        ok(*args, "--limit", "2")  # 2 prompts × 3 rows, collected
        assert "6 rows waiting" in ok(*args, "--no-wait")  # 2 more prompts, submitted
        assert "6 generation rows still wait in generate's batches and are not scored" in ok("score", run, *SCORE)
        line = refused(tmp_path, "rank", run)
        assert line.startswith(f"error: {run}: generations are unfinished (6 rows wait in batches): run `neat-data generate --prompts")
        assert "--no-wait" in line and line.endswith("` again to collect them first")
        ok(*args)  # collects
        assert refused(tmp_path, "rank", run).startswith(f"error: {run}: scores are stale")
    finally:
        server.stop()
    assert "12 rows (6 newly scored)" in ok("score", run, *SCORE)
    assert "prompts 4, candidates 12" in ok("rank", run)


def test_merge_refuses_score_shards_that_scored_an_older_text(tmp_path: Path):
    """Score shards, then `generate --redo`, then merge: before, the merged scores were of the pre-redo texts."""
    run_generate(config(tmp_path), backend=RecordingBackend(), progress=False)
    run = tmp_path / "run"
    for index in ("0", "1"):
        ok("score", run, *SCORE, "--num-shards", "2", "--shard-index", index)
    run_generate(
        config(tmp_path, redo=["steering=neg"], sampling=Sampling(max_tokens=8, seed=7)), backend=RecordingBackend(), progress=False
    )
    assert refused(tmp_path, "merge", run) == (
        f"error: {run}/scored: field 'key': 12 scored rows scored an older text (generated after scoring?); rerun every score "
        "shard, then merge again"
    )
