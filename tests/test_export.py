"""score → rank → export through the CLI; every format round-trips through `datasets` with exact columns."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner

from neat_data.cli import cli
from neat_data.engines.base import Sampling
from neat_data.stages.generate import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
EXPECTED_COLUMNS = {  # docs/FORMATS.md
    "trl": ["prompt", "chosen", "rejected"],
    "trl-implicit": ["chosen", "rejected"],
    "kto": ["prompt", "completion", "label"],
    "ranked": ["prompt", "prompt_id", "responses", "finish_reason", "scores", "steering"],
    "h4": ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"],
}


def response_length(prompts, responses):
    return [float(len(r)) for r in responses]


@pytest.fixture
def ranked_run(prompts_file: Path, tmp_path: Path, monkeypatch) -> Path:
    run = tmp_path / "run"
    run_generate(
        GenerateConfig(
            prompts=str(prompts_file), model="fake", out=run, num_pos=2, num_neg=2, num_neutral=1, sampling=Sampling(max_tokens=8)
        ),
        backend=RecordingBackend(),
        progress=False,
    )
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    runner = CliRunner()
    scored = runner.invoke(cli, ["score", str(run), "--scorer", "python:test_export:response_length", "--no-progress"])
    assert scored.exit_code == 0, scored.output
    ranked = runner.invoke(cli, ["rank", str(run), "--pairs", "all-pairs", "--min-margin", "1"])
    assert ranked.exit_code == 0, ranked.output
    assert "prompts 4, candidates 20, pairs kept" in ranked.output
    return run


@pytest.mark.parametrize("fmt", list(EXPECTED_COLUMNS))
def test_every_format_round_trips_through_datasets(ranked_run: Path, fmt: str):
    result = CliRunner().invoke(cli, ["export", str(ranked_run), "--format", fmt])
    assert result.exit_code == 0, result.output
    out = ranked_run / "export" / fmt
    from_parquet = datasets.load_dataset("parquet", data_files=str(out / "train.parquet"), split="train")
    from_disk = datasets.load_from_disk(str(out / "hf"))["train"]
    assert from_parquet.column_names == from_disk.column_names == EXPECTED_COLUMNS[fmt]
    assert from_parquet.to_list() == from_disk.to_list() and len(from_disk) > 0
    rows = from_disk.to_list()
    if fmt == "trl":
        assert all(r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == "assistant" and len(r["rejected"]) == 1 for r in rows)
        assert all(len(r["chosen"][0]["content"]) >= len(r["rejected"][0]["content"]) + 1 for r in rows)  # the scorer's order, margin 1
    if fmt == "trl-implicit":
        assert all(r["chosen"][:-1] == r["rejected"][:-1] and r["chosen"][-1]["role"] == "assistant" for r in rows)
    if fmt == "kto":
        assert len(rows) == 16 and sum(r["label"] for r in rows) == 8  # pos → True, neg → False, unsteered left out
        assert from_disk.features["label"] == datasets.Value("bool")
    if fmt == "ranked":
        assert len(rows) == 4 and all(r["scores"] == sorted(r["scores"], reverse=True) and len(r["responses"]) == 5 for r in rows)
        assert all(r["finish_reason"] == ["stop"] * 5 for r in rows)  # the recording backend's, candidate by candidate
    if fmt == "h4":
        assert all(r["messages"] == r["chosen"] and r["prompt"] == r["chosen"][-2]["content"] for r in rows)
        assert all(r["score_chosen"] > r["score_rejected"] for r in rows)
        assert from_disk.features["score_chosen"] == datasets.Value("float64")


def test_kto_by_score_threshold(ranked_run: Path):
    result = CliRunner().invoke(cli, ["export", str(ranked_run), "--format", "kto", "--kto-label", "score", "--kto-threshold", "45"])
    assert result.exit_code == 0, result.output
    rows = datasets.load_from_disk(str(ranked_run / "export" / "kto" / "hf"))["train"].to_list()
    assert len(rows) == 20 and all(r["label"] == (len(r["completion"][0]["content"]) >= 45) for r in rows)


def test_export_before_rank_is_a_clear_error(tmp_path: Path, prompts_file: Path):
    run = tmp_path / "run"
    run_generate(
        GenerateConfig(prompts=str(prompts_file), model="fake", out=run, sampling=Sampling(max_tokens=8)),
        backend=RecordingBackend(),
        progress=False,
    )
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "trl"])
    assert result.exit_code == 2 and "ranked/pairs.parquet: not ranked yet" in result.output
    result = CliRunner().invoke(cli, ["rank", str(run)])
    assert result.exit_code == 2 and "no scored/" in result.output


def test_report_writes_pngs_and_a_table(ranked_run: Path):
    result = CliRunner().invoke(cli, ["report", str(ranked_run)])
    assert result.exit_code == 0, result.output
    for name in ("scores.png", "margins.png"):
        assert (ranked_run / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (ranked_run / "report" / "summary.txt").read_text().splitlines()
    assert lines[0].split() == ["steering", "n", "mean", "median", "std", "min", "max"]
    assert [line.split()[:2] for line in lines[1:4]] == [["pos", "8"], ["neg", "8"], ["none", "4"]]
    assert lines[-1].startswith("pairs kept: ") and lines[-1] in result.output


def test_export_with_no_pairs_left_is_empty_but_loads(ranked_run: Path):
    assert CliRunner().invoke(cli, ["rank", str(ranked_run), "--min-margin", "1000"]).exit_code == 0
    for fmt in ("trl", "trl-implicit", "h4"):
        result = CliRunner().invoke(cli, ["export", str(ranked_run), "--format", fmt])
        assert result.exit_code == 0 and "0 rows →" in result.output, result.output
        loaded = datasets.load_from_disk(str(ranked_run / "export" / fmt / "hf"))["train"]
        assert len(loaded) == 0 and loaded.column_names == EXPECTED_COLUMNS[fmt]


def test_ranked_export_of_lists_ranked_before_finish_reasons_travelled(ranked_run: Path):
    """An older ranked/lists.parquet (no finish_reason column) still exports: nulls, one per candidate (= finished)."""
    import pyarrow.parquet as pq

    lists_path = ranked_run / "ranked" / "lists.parquet"
    old = pq.read_table(lists_path).drop_columns(["finish_reason"])
    pq.write_table(old, lists_path)
    result = CliRunner().invoke(cli, ["export", str(ranked_run), "--format", "ranked"])
    assert result.exit_code == 0, result.output
    rows = datasets.load_from_disk(str(ranked_run / "export" / "ranked" / "hf"))["train"].to_list()
    assert len(rows) == 4 and all(r["finish_reason"] == [None] * len(r["responses"]) for r in rows)


def _decoded(value):
    """mlcroissant hands text back as bytes and nested fields under '<record set>/<field>/<sub>' names."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    if isinstance(value, dict):
        return {k.rsplit("/", 1)[-1]: _decoded(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("fmt", ["h4", "ranked"])
def test_croissant_json_validates_with_mlcroissant_and_reads_back_the_rows(ranked_run: Path, fmt: str):
    import json

    import mlcroissant
    import pyarrow.parquet as pq

    assert CliRunner().invoke(cli, ["audit", str(ranked_run), "--resamples", "20"]).exit_code == 0
    # a second split first: croissant.json describes every split file of the export folder
    for split in ("test", "train"):
        assert CliRunner().invoke(cli, ["export", str(ranked_run), "--format", fmt, "--split", split]).exit_code == 0
    out = ranked_run / "export" / fmt
    document = json.loads((out / "croissant.json").read_text())
    dataset = mlcroissant.Dataset(jsonld=str(out / "croissant.json"))  # raises on any validation error
    assert dataset.metadata.ctx.issues.errors == set()
    rows = [{k.split("/", 1)[1]: _decoded(v) for k, v in record.items()} for record in dataset.records("train")]
    expected = pq.read_table(out / "train.parquet").to_pylist()
    assert rows == expected and len(rows) > 0
    assert [d["@id"] for d in document["distribution"]] == ["test.parquet", "train.parquet"]
    import hashlib

    assert document["distribution"][1]["sha256"] == hashlib.sha256((out / "train.parquet").read_bytes()).hexdigest()
    assert document["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    assert document["rai:hasSyntheticData"] is True and document["rai:dataCollectionType"].startswith("Synthetic")
    assert document["rai:machineAnnotationTools"] == ["generator: fake (backend vllm)", "scorer: python:test_export:response_length"]
    labels = [a["prov:label"] for a in document["prov:wasGeneratedBy"]]
    assert labels[:4] == ["generate", "score", "rank", "audit"] and f"export:{fmt}" in labels
    assert document["prov:wasGeneratedBy"][2]["description"].startswith(f"neat-data rank {ranked_run} --pairs all-pairs")
