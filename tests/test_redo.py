"""`generate --redo CLASS` with changed sampling: exactly those rows are generated again, every other row is the same
row (all columns, read back from Parquet), keys stay, the manifest keeps the run's identity and lists each pass, a
plain re-run finds everything done, and `score` scores again only the rows whose text changed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import write_jsonl

from neat_data.cli import cli
from neat_data.core.manifest import read_manifest
from neat_data.core.runfolder import ShardedTable
from neat_data.core.schemas import GENERATIONS, SCORED
from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

CALLS: list[str] = []


def counting_length(prompts, responses):
    CALLS.extend(responses)
    return [float(len(r)) for r in responses]


def long_or_short(messages, sample_index, seed):
    """Replies of 3 to 12 words, by seed and sample: at max_tokens 8 some are cut."""
    words = 3 + (seed + 5 * sample_index) % 10
    prefix = "I'm sorry, " if seed % 3 == 0 and sample_index == 0 else ""  # an AdvBench refusal prefix
    return prefix + " ".join(f"w{seed % 97}_{i}" for i in range(words))


def config(prompts: Path, run: Path, max_tokens: int, redo: list[str] | None = None, seed: int = 0) -> GenerateConfig:
    return GenerateConfig(
        prompts=str(prompts),
        model="fake",
        out=run,
        num_pos=2,
        num_neg=2,
        sampling=Sampling(max_tokens=max_tokens, seed=seed),
        redo=redo or [],
    )


def rows(run: Path) -> dict[str, dict]:
    return {row["key"]: row for row in ShardedTable(run / "generations", GENERATIONS).read().to_pylist()}


@pytest.fixture
def run_with_truncated(tmp_path: Path) -> tuple[Path, Path, dict[str, dict]]:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Tell me about topic {i}."} for i in range(8)])
    run = tmp_path / "run"
    run_generate(config(prompts, run, 8), backend=RecordingBackend(reply=long_or_short, cut_at_max_tokens=True), progress=False)
    before = rows(run)
    assert 0 < sum(r["finish_reason"] == "length" for r in before.values()) < len(before)
    return prompts, run, before


def test_redo_truncated_regenerates_exactly_those_rows_and_keeps_every_other_row(run_with_truncated):
    prompts, run, before = run_with_truncated
    truncated = {k for k, r in before.items() if r["finish_reason"] == "length"}
    backend = RecordingBackend(reply=long_or_short, cut_at_max_tokens=True)
    summary = run_generate(config(prompts, run, 64, redo=["truncated"]), backend=backend, progress=False)
    after = rows(run)
    assert set(after) == set(before)  # the same keys: no row added, none lost
    assert {k for k in after if after[k] != before[k]} == truncated  # exactly the truncated rows changed …
    for key in set(before) - truncated:
        assert after[key] == before[key]  # … every other row is the same row, column for column
    for key in truncated:
        assert after[key]["finish_reason"] == "stop" and json.loads(after[key]["sampling"])["max_tokens"] == 64
        assert after[key]["settings_hash"] != before[key]["settings_hash"]
        assert len(after[key]["response"].split()) > 8
    # only requests holding a truncated sample were sent, with the new sampling; their other sample was not rewritten
    requests_with_truncated = {(r["prompt_id"], r["steering"]) for k, r in before.items() if k in truncated}
    assert len(backend.sent) == len(requests_with_truncated) and backend.samplings[0].max_tokens == 64
    assert summary.generated_rows == len(truncated)
    generate = read_manifest(run).stage("generate").entry()
    assert generate["config"]["sampling"]["max_tokens"] == 8 and generate["config"]["redo"] == []  # the run's identity
    assert [p["redo"] for p in generate["passes"]] == [[], ["truncated"]]
    assert generate["passes"][1]["sampling"]["max_tokens"] == 64 and generate["passes"][1]["rows_written"] == len(truncated)
    assert generate["passes"][1]["settings_hash"] == next(iter(after[k]["settings_hash"] for k in truncated))
    # a plain run with the folder's own settings: everything is done, nothing is sent
    plain = RecordingBackend(reply=long_or_short, cut_at_max_tokens=True)
    assert run_generate(config(prompts, run, 8), backend=plain, progress=False).generated_rows == 0 and plain.sent == []
    assert rows(run) == after


def test_redo_steering_neg_with_another_seed_and_score_follows_only_changed_rows(run_with_truncated, monkeypatch):
    prompts, run, before = run_with_truncated
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    runner = CliRunner()
    assert runner.invoke(cli, ["score", str(run), "--scorer", "python:test_redo:counting_length", "--no-progress"]).exit_code == 0
    scored_before = {r["key"]: r for r in ShardedTable(run / "scored", SCORED).read().to_pylist()}
    run_generate(
        config(prompts, run, 8, redo=["steering=neg"], seed=7),
        backend=RecordingBackend(reply=long_or_short, cut_at_max_tokens=True),
        progress=False,
    )
    after = rows(run)
    neg = {k for k, r in before.items() if r["steering"] == "neg"}
    assert {k for k in after if after[k] != before[k]} == neg
    assert all(after[k]["seed"] != before[k]["seed"] and json.loads(after[k]["sampling"])["seed"] == 7 for k in neg)
    CALLS.clear()
    result = runner.invoke(cli, ["score", str(run), "--scorer", "python:test_redo:counting_length", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(CALLS) == sorted(after[k]["response"] for k in neg)  # rescored: the regenerated rows only
    scored_after = {r["key"]: r for r in ShardedTable(run / "scored", SCORED).read().to_pylist()}
    for key in set(before) - neg:
        assert scored_after[key] == scored_before[key]
    for key in neg:  # the scored row carries the new generation row (its sampling, seed, settings hash) and its score
        assert {k: scored_after[key][k] for k in GENERATIONS.names} == after[key]
        assert scored_after[key]["score"] == len(after[key]["response"])


def test_redo_refused_and_error_select_their_rows(run_with_truncated):
    prompts, run, before = run_with_truncated
    from neat_data.stages.generate.redo import redo_keys

    table = pq.read_table(sorted((run / "generations").glob("part-*.parquet"))[0])
    refused = redo_keys(table, ["refused"])
    assert refused == {k for k, r in before.items() if r["response"].startswith("I'm sorry")} and refused
    assert redo_keys(table, ["error"]) == set()


def test_bad_redo_input_is_one_line(tmp_path: Path, run_with_truncated):
    prompts, run, _ = run_with_truncated
    base = ["generate", "--prompts", str(prompts), "--model", "fake", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"]
    for extra, fragment in (
        (["--out", str(run), "--redo", "truncated,sideways"], "option 'redo.1': Input should be 'truncated', 'error', 'refused'"),
        (["--out", str(tmp_path / "fresh"), "--redo", "truncated"], "nothing to --redo: this run folder has no generations yet"),
        (["--out", str(run), "--redo", "error", "--overwrite"], "cannot be combined with --overwrite"),
    ):
        result = CliRunner().invoke(cli, [*base, *extra, "--no-progress"])
        assert result.exit_code == 2 and fragment in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
