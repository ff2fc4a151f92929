"""score → rank → export through the CLI; every format round-trips through `datasets` with exact columns."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner

from neat_data.cli import cli
from neat_data.engines.base import Sampling
from neat_data.stages.export import SOURCE_OF_SIDES, ExportFormat
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
EXPECTED_COLUMNS = {  # docs/FORMATS.md
    "trl": ["prompt", "chosen", "rejected"],
    "trl-implicit": ["chosen", "rejected"],
    "kto": ["prompt", "completion", "label"],
    "ranked": ["prompt", "prompt_id", "responses", "finish_reason", "scores", "steering", "source_label"],
    "h4": ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected", *SOURCE_OF_SIDES],
    "llamafactory": ["messages", "chosen", "rejected"],
}
PAIRWISE = ("trl", "trl-implicit", "h4", "llamafactory")


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


@pytest.mark.parametrize("fmt", typing.get_args(ExportFormat))  # the format list itself: a new name must get a row here
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
    if fmt == "llamafactory":
        assert all(r["messages"][-1]["role"] == "user" and r["chosen"]["role"] == r["rejected"]["role"] == "assistant" for r in rows)
        info = json.loads((out / "dataset_info.json").read_text())
        assert info == {
            "neat_train": {
                "file_name": "train.parquet",
                "formatting": "sharegpt",
                "ranking": True,
                "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                    "system_tag": "system",
                },
            }
        }
    else:
        assert not (out / "dataset_info.json").exists()


def test_formats_are_one_mapping_without_fallback():
    """Every name of ExportFormat has its own layout and test row; nothing falls through to another format's columns."""
    from neat_data.stages.export import LAYOUTS, features

    assert list(LAYOUTS) == list(typing.get_args(ExportFormat)) == list(EXPECTED_COLUMNS)
    for fmt in typing.get_args(ExportFormat):
        assert list(features(fmt)) == EXPECTED_COLUMNS[fmt]


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


def test_pairwise_export_of_a_run_with_no_pairs_is_exit_2_naming_the_format(ranked_run: Path):
    """An empty dataset would reach a trainer as 'no data' far from its cause: it is refused, the line says why."""
    assert CliRunner().invoke(cli, ["export", str(ranked_run), "--format", "trl"]).exit_code == 0  # an earlier export
    assert CliRunner().invoke(cli, ["rank", str(ranked_run), "--min-margin", "1000"]).exit_code == 0
    for fmt in PAIRWISE:
        result = CliRunner().invoke(cli, ["export", str(ranked_run), "--format", fmt])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith("error: ") and "ranked/pairs.parquet" in lines[0]
        assert f"format '{fmt}' is pairwise and rank kept no pairs" in lines[0]
    old = datasets.load_from_disk(str(ranked_run / "export" / "trl" / "hf"))["train"]
    assert len(old) > 0  # the earlier export is left whole, not replaced by an empty one
    result = CliRunner().invoke(cli, ["export", str(ranked_run), "--format", "kto", "--kto-label", "score", "--kto-threshold", "0"])
    assert result.exit_code == 0, result.output  # kto reads scored rows, not pairs


def test_llamafactory_refuses_a_prompt_its_converter_would_skip(ranked_run: Path):
    """LLaMA-Factory's sharegpt converter drops a row whose turns do not alternate, with a log line: refused here."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs_path = ranked_run / "ranked" / "pairs.parquet"
    pairs = pq.read_table(pairs_path)
    prompts = pairs.column("prompt").to_pylist()
    prompts[3] = [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Hello?"}]  # two user turns in a row
    pq.write_table(
        pairs.set_column(pairs.schema.get_field_index("prompt"), "prompt", pa.array(prompts, pairs.schema.field("prompt").type)), pairs_path
    )
    result = CliRunner().invoke(cli, ["export", str(ranked_run), "--format", "llamafactory"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "pairs.parquet: row 3: field 'prompt': format 'llamafactory' needs turns alternating" in result.output
    assert "got user, user" in result.output
    assert not (ranked_run / "export" / "llamafactory").exists()
    for fmt in ("trl", "trl-implicit", "h4"):  # layouts that keep any list of turns as it is
        assert CliRunner().invoke(cli, ["export", str(ranked_run), "--format", fmt]).exit_code == 0


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


def test_llamafactory_dataset_info_names_every_split_written(ranked_run: Path):
    for split in ("train", "test"):
        assert CliRunner().invoke(cli, ["export", str(ranked_run), "--format", "llamafactory", "--split", split]).exit_code == 0
    out = ranked_run / "export" / "llamafactory"
    info = json.loads((out / "dataset_info.json").read_text())
    assert sorted(info) == ["neat_test", "neat_train"] and info["neat_test"]["file_name"] == "test.parquet"
    assert all((out / entry["file_name"]).is_file() for entry in info.values())


def test_kto_with_no_steered_rows_is_exit_2(tmp_path: Path, prompts_file: Path, monkeypatch):
    run = tmp_path / "run"
    run_generate(
        GenerateConfig(
            prompts=str(prompts_file), model="fake", out=run, num_pos=0, num_neg=0, num_neutral=2, sampling=Sampling(max_tokens=8)
        ),
        backend=RecordingBackend(),
        progress=False,
    )
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert CliRunner().invoke(cli, ["score", str(run), "--scorer", "python:test_export:response_length", "--no-progress"]).exit_code == 0
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "kto"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: {run / 'scored'}: format 'kto' has nothing to export: no steered ok rows (pos/neg)"
    ]


def _decoded(value):
    """mlcroissant hands text back as bytes and nested fields under '<record set>/<field>/<sub>' names."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    if isinstance(value, dict):
        return {k.rsplit("/", 1)[-1]: _decoded(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("fmt", typing.get_args(ExportFormat))  # every format: its croissant.json reads back as its Parquet
def test_croissant_json_validates_with_mlcroissant_and_reads_back_the_rows(ranked_run: Path, fmt: str):
    import json

    import mlcroissant
    import pyarrow.parquet as pq

    assert CliRunner().invoke(cli, ["audit", str(ranked_run), "--resamples", "100"]).exit_code == 0
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


def test_the_saved_dataset_fingerprint_follows_the_content(ranked_run: Path):
    """export gives datasets its own content fingerprint (datasets would pickle the table to find one): the same
    pairs give the same one, a changed text another; the saved hf/ reads back equal to the Parquet split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def export_fingerprint() -> str:
        result = CliRunner().invoke(cli, ["export", str(ranked_run), "--format", "trl"])
        assert result.exit_code == 0, result.output
        return json.loads((ranked_run / "export" / "trl" / "hf" / "train" / "state.json").read_text())["_fingerprint"]

    first = export_fingerprint()
    assert export_fingerprint() == first
    saved = datasets.load_from_disk(str(ranked_run / "export" / "trl" / "hf"))["train"]
    assert saved.to_list() == pq.read_table(ranked_run / "export" / "trl" / "train.parquet").to_pylist()
    pairs_path = ranked_run / "ranked" / "pairs.parquet"
    pairs = pq.read_table(pairs_path)
    chosen = pairs.column("chosen").to_pylist()
    pq.write_table(pairs.set_column(pairs.schema.get_field_index("chosen"), "chosen", pa.array([chosen[0] + "!"] + chosen[1:])), pairs_path)
    assert export_fingerprint() != first
