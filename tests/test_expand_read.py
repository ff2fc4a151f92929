"""Expansion, reading (issue 29): a preference file's own responses become `generations` rows of steering "dataset",
through the real `neat-data generate --responses keep` against the fake OpenAI server. The expected texts are taken
from the fixtures here, independently of neat_data's reader: each must come back byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import REPO, served_generate_args, write_jsonl

from neat_data.cli import cli
from neat_data.core.keys import prompt_id
from neat_data.core.runfolder import ShardedTable
from neat_data.core.schemas import GENERATIONS

EXPAND = REPO / "tests" / "data" / "expand"


def source_rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (EXPAND / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def hh_answer(transcript: str) -> str:
    return transcript.rsplit("\n\nAssistant: ", 1)[1]


def last(messages: list[dict[str, str]]) -> str:
    return messages[-1]["content"]


def expected_answers(name: str) -> list[list[tuple[str, str, int | None, float | None, bool | None]]]:
    """Per source row: (text, label, rank, score, safe) of each response, in the source's order."""
    rows = source_rows(name)
    if name == "hh.jsonl":
        return [[(hh_answer(r["chosen"]), "chosen", 0, None, None), (hh_answer(r["rejected"]), "rejected", 1, None, None)] for r in rows]
    if name in ("trl.jsonl", "trl_conversational.jsonl", "trl_implicit.jsonl"):
        text = (lambda side: side) if name == "trl.jsonl" else last
        return [[(text(r["chosen"]), "chosen", 0, None, None), (text(r["rejected"]), "rejected", 1, None, None)] for r in rows]
    if name == "ultrafeedback.jsonl":
        return [
            [(last(r["chosen"]), "chosen", 0, r["score_chosen"], None), (last(r["rejected"]), "rejected", 1, r["score_rejected"], None)]
            for r in rows
        ]
    if name == "pku.jsonl":
        return [
            [
                (r[f"response_{i}"], f"response_{i}", 0 if r["safer_response_id"] == i else 1, None, r[f"is_response_{i}_safe"])
                for i in (0, 1)
            ]
            for r in rows
        ]
    best_first = {"ranked.jsonl": [[2, 0, 1], [1, 0, 2], [0, 1]], "ranked_ranks.jsonl": [[2, 0, 1], [0, 1]]}[name]
    ranks = [[order.index(i) for i in range(len(order))] for order in best_first]
    return [
        [
            (text, "ranked", rank, (r["scores"][i] if "scores" in r else None), None)
            for i, (text, rank) in enumerate(zip(r["responses"], row_ranks))
        ]
        for r, row_ranks in zip(rows, ranks)
    ]


def generate(server_url: str, prompts: Path, out: Path, *extra: str, num_pos: int = 1, num_neg: int = 1) -> str:
    result = CliRunner().invoke(
        cli, [*served_generate_args(prompts, server_url, out, num_pos=num_pos, num_neg=num_neg), "--responses", "keep", *extra]
    )
    assert result.exit_code == 0, result.output
    return result.output


def rows_of(run: Path) -> list[dict[str, Any]]:
    return ShardedTable(run / "generations", GENERATIONS).read().to_pylist()


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "x")


LAYOUT_FILES = sorted(path.name for path in EXPAND.glob("*.jsonl"))


@pytest.mark.parametrize("name", LAYOUT_FILES)
def test_each_layout_becomes_dataset_rows_beside_the_generated_ones(name: str, fake_server, tmp_path: Path):
    server = fake_server()
    run = tmp_path / "run"
    output = generate(server.url, EXPAND / name, run)
    rows = rows_of(run)
    expected = expected_answers(name)
    dataset = [r for r in rows if r["steering"] == "dataset"]
    generated = [r for r in rows if r["steering"] != "dataset"]
    assert len(dataset) == sum(map(len, expected)) and len(generated) == 2 * len(expected)
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in dataset:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    got = [
        [
            (r["response"], r["source_label"], r["source_rank"], r["source_score"], r["source_safe"])
            for r in sorted(rs, key=lambda r: r["sample_index"])
        ]
        for rs in by_prompt.values()
    ]
    assert sorted(got) == sorted(expected)  # every text byte for byte, with its label, rank, score and safety flag
    for row in dataset:
        assert row["status"] == "ok" and row["error"] is None and row["finish_reason"] is None
        assert row["backend"] == "dataset" and row["model"] is None and row["sampling"] is None and row["seed"] is None
        assert row["system_mode"] == "none" and row["system_prompt"] is None and row["pair_library"] is None
        assert row["prompt_tokens"] is None and row["completion_tokens"] is None
        assert [r["sample_index"] for r in by_prompt[row["prompt_id"]]] == list(range(len(by_prompt[row["prompt_id"]])))
    for row in generated:  # the same neutral prompt as the prompt's dataset rows, and nulls in the source columns
        (sibling,) = {json.dumps(r["prompt"]) for r in by_prompt[row["prompt_id"]]}
        assert json.dumps(row["prompt"]) == sibling
        assert prompt_id(row["prompt"]) == row["prompt_id"] or name == "ultrafeedback.jsonl"  # which has its own ids
        assert (row["source_label"], row["source_rank"], row["source_score"], row["source_safe"]) == (None, None, None, None)
    assert len({r["key"] for r in rows}) == len(rows)
    assert f"{len(dataset)} from the dataset ({len(dataset)} new), {len(generated)} generated" in output
    entry = json.loads((run / "manifest.json").read_text())["stages"]["generate"]
    assert (entry["rows_dataset"], entry["rows_generated"]) == (len(dataset), len(generated))


def test_the_prompts_are_those_of_the_source(fake_server, tmp_path: Path):
    """HH: the conversation before the final answer; implicit TRL: the message lists less their answer; UltraFeedback
    keeps its own prompt_id."""
    server = fake_server()
    for name in ("hh", "trl_implicit", "ultrafeedback"):
        generate(server.url, EXPAND / f"{name}.jsonl", tmp_path / name)
    hh, implicit, uf = (rows_of(tmp_path / name) for name in ("hh", "trl_implicit", "ultrafeedback"))
    assert {json.dumps(r["prompt"]) for r in hh if "Pistachio" in (r["response"] or "")} == {
        json.dumps(
            [
                {"role": "user", "content": "What's a good name for a cat?"},
                {"role": "assistant", "content": "Some people like Luna."},
                {"role": "user", "content": "Something less common?"},
            ]
        )
    }
    assert {r["prompt"][-1]["content"] for r in implicit} == {r["chosen"][0]["content"] for r in source_rows("trl_implicit.jsonl")}
    assert {r["prompt_id"] for r in uf} == {r["prompt_id"] for r in source_rows("ultrafeedback.jsonl")}


def test_pku_rank_follows_the_chosen_flag(fake_server, tmp_path: Path):
    server = fake_server()
    generate(server.url, EXPAND / "pku.jsonl", tmp_path / "better", "--pku-rank", "better")
    ranks = {r["response"]: r["source_rank"] for r in rows_of(tmp_path / "better") if r["steering"] == "dataset"}
    for source in source_rows("pku.jsonl"):
        for i in (0, 1):
            assert ranks[source[f"response_{i}"]] == (0 if source["better_response_id"] == i else 1)


def test_dataset_rows_alone_call_no_engine(fake_server, tmp_path: Path):
    server = fake_server()
    output = generate(server.url, EXPAND / "pku.jsonl", tmp_path / "run", num_pos=0, num_neg=0)
    rows = rows_of(tmp_path / "run")
    assert len(rows) == 6 and {r["steering"] for r in rows} == {"dataset"}
    assert server.requests == []
    assert "6 rows (6 ok, 0 error; 0 new; 6 from the dataset (6 new), 0 generated) by steering {'dataset': 6}" in output


def test_a_repeated_prompt_is_generated_once_and_keeps_every_answer(fake_server, tmp_path: Path):
    """PKU-SafeRLHF pairs one prompt with several answer pairs: all of them become rows of that one prompt."""
    server = fake_server()
    first, again = source_rows("pku.jsonl")[:2]
    again = again | {"prompt": first["prompt"]}
    prompts = write_jsonl(tmp_path / "pku.jsonl", [first, again])
    output = generate(server.url, prompts, tmp_path / "run")
    rows = rows_of(tmp_path / "run")
    dataset = sorted((r for r in rows if r["steering"] == "dataset"), key=lambda r: r["sample_index"])
    assert [r["response"] for r in dataset] == [first["response_0"], first["response_1"], again["response_0"], again["response_1"]]
    assert [r["sample_index"] for r in dataset] == [0, 1, 2, 3] and len({r["prompt_id"] for r in rows}) == 1
    assert sorted(r["steering"] for r in rows if r["steering"] != "dataset") == ["neg", "pos"] and len(server.requests) == 2
    assert "4 from the dataset (4 new), 2 generated" in output


def test_the_dry_run_counts_the_dataset_rows_apart(tmp_path: Path):
    args = [*served_generate_args(EXPAND / "pku.jsonl", "http://127.0.0.1:9/v1", tmp_path / "run"), "--responses", "keep", "--dry-run"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "dry run (nothing written, nothing sent): 6 requests → 6 rows for 3 prompts on served (openai); "
        "and 6 rows from the dataset (no request)"
    )
    assert not (tmp_path / "run").exists()


def test_resume_adds_the_missing_dataset_rows_and_keeps_the_others(fake_server, tmp_path: Path):
    server = fake_server()
    run = tmp_path / "run"
    generate(server.url, EXPAND / "hh.jsonl", run, "--limit", "2")
    first = {r["key"]: r for r in rows_of(run)}
    assert len(first) == 8
    output = generate(server.url, EXPAND / "hh.jsonl", run)
    after = {r["key"]: r for r in rows_of(run)}
    assert len(after) == 12 and all(after[key] == row for key, row in first.items())
    assert "6 from the dataset (2 new)" in output
    again = generate(server.url, EXPAND / "hh.jsonl", run)
    assert rows_of(run) and {r["key"]: r for r in rows_of(run)} == after and "6 from the dataset (0 new)" in again


def test_redo_never_selects_a_dataset_row(fake_server, tmp_path: Path):
    """A dataset answer that opens with a refusal prefix is not a refusal to regenerate: no engine made it."""
    server = fake_server()
    run = tmp_path / "run"
    prompts = write_jsonl(
        tmp_path / "trl.jsonl",
        [{"prompt": "How do I pick a lock?", "chosen": "I'm sorry, I cannot help with that.", "rejected": "Rake it."}],
    )
    generate(server.url, prompts, run)
    before = {r["key"]: r for r in rows_of(run) if r["steering"] == "dataset"}
    generate(server.url, prompts, run, "--redo", "refused", "--max-tokens", "9")
    after = {r["key"]: r for r in rows_of(run) if r["steering"] == "dataset"}
    assert after == before and len(after) == 2
    passes = json.loads((run / "manifest.json").read_text())["stages"]["generate"]["passes"]
    assert passes[-1]["rows_selected_for_redo"] == 0


def test_shards_then_merge_equal_one_process(fake_server, tmp_path: Path):
    server = fake_server()
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    generate(server.url, EXPAND / "ranked.jsonl", single)
    for index in range(2):
        generate(server.url, EXPAND / "ranked.jsonl", sharded, "--num-shards", "2", "--shard-index", str(index))
    merged = CliRunner().invoke(cli, ["merge", str(sharded)])
    assert merged.exit_code == 0, merged.output

    def dataset(run: Path) -> dict[str, dict[str, Any]]:
        return {r["key"]: r for r in rows_of(run) if r["steering"] == "dataset"}

    assert len(dataset(single)) == 8 and dataset(sharded) == dataset(single)


def test_an_older_shard_reads_the_source_columns_as_null(tmp_path: Path):
    """A generations shard written before the source columns existed reads them as nulls (not a corrupt shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "generations"
    folder.mkdir()
    old = pa.schema([field for field in GENERATIONS if not field.name.startswith("source_")])
    row = {name: None for name in old.names} | {"key": "k", "steering": "pos", "status": "ok", "response": "hi"}
    pq.write_table(pa.Table.from_pylist([row], schema=old), folder / "part-000000.parquet")
    (read,) = ShardedTable(folder, GENERATIONS).read().to_pylist()
    assert (read["source_label"], read["source_rank"], read["source_score"], read["source_safe"]) == (None, None, None, None)


def test_a_second_row_in_another_layout_is_refused(tmp_path: Path):
    prompts = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."},
            {"prompt": "Yo", "response_0": "A", "response_1": "B", "safer_response_id": 0},
        ],
    )
    result = CliRunner().invoke(cli, [*served_generate_args(prompts, "http://127.0.0.1:9/v1", tmp_path / "run"), "--responses", "keep"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {prompts}: row 2: field 'layout': the columns are those of the pku layout, not trl"
    assert not (tmp_path / "run").exists()
