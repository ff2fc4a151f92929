"""Rank over the union of a dataset's own answers (steering `dataset`, docs/FORMATS.md) and the generated ones:
the dataset's preference kept as a constraint (`--dataset-order keep`), the strategies that pair by source
(`original`, `chosen-vs-neg`, `pos-vs-rejected`), several strategies in one run, each pair's sources; and through the
CLI, score → rank → export trl with every original pair byte-identical."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_rank import row as scored_row

from neat_data.cli import cli
from neat_data.core.runfolder import atomic_write_table
from neat_data.core.schemas import GENERATIONS, SCORED
from neat_data.stages.rank.stage import RankConfig, rank_tables


def answer(prompt_id: str, key: str, response: str, score: float, steering: str, label: str | None = None, rank: int | None = None) -> dict:
    """test_rank's scored row, with the columns a dataset answer adds (it has no finish reason)."""
    return scored_row(prompt_id, key, response, score, steering, finish=None if steering == "dataset" else "stop") | {
        "source_label": label,
        "source_rank": rank,
    }


# p1: an HH-style pair (chosen scored below rejected) with two generated answers; p2: a ranked list of three with a
# tie in the dataset's ranks, one positive and one negative answer; p3: generated answers only.
UNION = pa.Table.from_pylist(
    [
        answer("p1", "c", "original chosen", 0.2, "dataset", "chosen", 0),
        answer("p1", "r", "original rejected", 0.8, "dataset", "rejected", 1),
        answer("p1", "p", "positive answer", 0.5, "pos"),
        answer("p1", "n", "negative answer", 0.9, "neg"),
        answer("p2", "x", "ranked first", 0.1, "dataset", "ranked", 0),
        answer("p2", "y", "ranked second", 0.7, "dataset", "ranked", 1),
        answer("p2", "z", "ranked second too", 0.3, "dataset", "ranked", 1),
        answer("p2", "q", "positive two", 0.6, "pos"),
        answer("p2", "m", "negative two", 0.0, "neg"),
        answer("p3", "g", "generated pos", 1.0, "pos"),
        answer("p3", "h", "generated neg", 0.0, "neg"),
    ],
    schema=SCORED,
)


def lists_by_prompt(lists: pa.Table) -> dict[str, tuple[list[str], list[float]]]:
    return {row["prompt_id"]: (row["keys"], row["scores"]) for row in lists.to_pylist()}


def test_by_score_the_union_is_ranked_like_any_candidates():
    lists, _, _, _ = rank_tables(RankConfig(run="."), UNION)
    got = lists_by_prompt(lists)
    assert got["p1"] == (["n", "r", "p", "c"], [0.9, 0.8, 0.5, 0.2])
    assert got["p2"] == (["y", "q", "z", "x", "m"], [0.7, 0.6, 0.3, 0.1, 0.0])
    assert lists.to_pylist()[0]["source_label"] == [None, "rejected", None, "chosen"]


def test_keeping_the_dataset_order_fills_the_places_of_its_answers_in_its_own_order():
    """The dataset's ranked answers take the places the scores gave them, best place to its rank 0; equal ranks keep
    score order; generated answers and every score stay where they were (docs/METHOD.md)."""
    lists, _, _, _ = rank_tables(RankConfig(run=".", dataset_order="keep"), UNION)
    got = lists_by_prompt(lists)
    assert got["p1"] == (["n", "c", "p", "r"], [0.9, 0.8, 0.5, 0.2])  # chosen takes the rejected's place and score
    assert got["p2"] == (["x", "q", "y", "z", "m"], [0.7, 0.6, 0.3, 0.1, 0.0])  # y before z: the tie in score order
    assert got["p3"] == (["g", "h"], [1.0, 0.0])
    p1 = lists.to_pylist()[0]
    assert p1["responses"] == ["negative answer", "original chosen", "positive answer", "original rejected"]
    assert p1["source_label"] == [None, "chosen", None, "rejected"] and p1["source_rank"] == [None, 0, None, 1]
    assert p1["steering"] == ["neg", "dataset", "pos", "dataset"] and p1["finish_reason"] == ["stop", None, "stop", None]
    _, pairs, _, _ = rank_tables(RankConfig(run=".", dataset_order="keep"), UNION)  # best-vs-worst over the kept order
    assert [(p["key_chosen"], p["key_rejected"]) for p in pairs.to_pylist()] == [("n", "r"), ("x", "m"), ("g", "h")]


def pair_rows(pairs: pa.Table) -> list[tuple]:
    return [
        (p["prompt_id"], p["key_chosen"], p["key_rejected"], p["strategy"], p["source_label_chosen"], p["source_label_rejected"])
        for p in pairs.to_pylist()
    ]


def test_the_source_strategies_pair_by_the_dataset_labels_whatever_the_scores():
    config = RankConfig(run=".", pairs="original,chosen-vs-neg,pos-vs-rejected".split(","), min_margin=0.5)
    _, pairs, dropped, summary = rank_tables(config, UNION)
    assert pair_rows(pairs) == [
        ("p1", "c", "r", "original", "chosen", "rejected"),  # chosen scored 0.2 below rejected's 0.8: kept as the dataset says
        ("p2", "x", "y", "original", "ranked", "ranked"),
        ("p2", "x", "z", "original", "ranked", "ranked"),
        ("p1", "c", "n", "chosen-vs-neg", "chosen", None),
        ("p2", "x", "m", "chosen-vs-neg", "ranked", None),
        ("p1", "p", "r", "pos-vs-rejected", None, "rejected"),
        ("p2", "q", "y", "pos-vs-rejected", None, "ranked"),
        ("p2", "q", "z", "pos-vs-rejected", None, "ranked"),
    ]
    assert [(p["steering_chosen"], p["steering_rejected"]) for p in pairs.to_pylist()][:4] == [("dataset", "dataset")] * 3 + [
        ("dataset", "neg")
    ]
    assert dropped.num_rows == 0 and summary.pairs_kept == 8  # labelled by the dataset: no margin check, no tie
    assert pairs.to_pylist()[0]["score_chosen"] == 0.2 and pairs.to_pylist()[0]["score_rejected"] == 0.8


def test_a_pair_two_strategies_form_is_kept_once_by_the_first_named():
    _, pairs, dropped, _ = rank_tables(RankConfig(run=".", pairs=["original", "all-pairs"]), UNION)
    rows = pair_rows(pairs)
    assert ("p1", "c", "r", "original", "chosen", "rejected") in rows
    assert not [row for row in rows if row[3] == "all-pairs" and {row[1], row[2]} == {"c", "r"}]  # not again, the other way
    assert len(rows) == 3 + (6 - 1) + (10 - 2) + 1  # all-pairs: 6 + 10 + 1 less the 3 original ones
    assert set(dropped.column("strategy").to_pylist()) <= {"original", "all-pairs"}


def test_length_balancing_names_the_strategy_of_each_pair_it_drops():
    config = RankConfig(run=".", pairs=["original", "chosen-vs-neg", "pos-vs-rejected"], balance_length=1.1)
    _, pairs, dropped, _ = rank_tables(config, UNION)
    assert dropped.num_rows and set(dropped.column("reason").to_pylist()) <= {"length-band", "length-balance"}
    formed = {(r[1], r[2]): r[3] for r in pair_rows(rank_tables(RankConfig(run=".", pairs=config.pairs), UNION)[1])}
    assert [formed[(d["key_chosen"], d["key_rejected"])] for d in dropped.to_pylist()] == dropped.column("strategy").to_pylist()


def test_the_source_strategies_form_nothing_without_dataset_answers():
    only_generated = UNION.filter(pa.compute.equal(UNION.column("prompt_id"), "p3"))
    _, pairs, _, _ = rank_tables(RankConfig(run=".", pairs=["original", "chosen-vs-neg", "pos-vs-rejected"]), only_generated)
    assert pairs.num_rows == 0


def test_one_strategy_reads_back_as_before_and_a_list_as_a_list():
    assert RankConfig(run=".", pairs="pos-vs-neg").model_dump(mode="json")["pairs"] == "pos-vs-neg"
    assert RankConfig(run=".", pairs=["original", "pos-vs-neg"]).model_dump(mode="json")["pairs"] == ["original", "pos-vs-neg"]
    with pytest.raises(ValueError, match="twice"):
        RankConfig(run=".", pairs=["original", "original"])


# ------------------------------------------------------------------ through the CLI: score → rank → export
def score_by_length(prompts, responses):
    return [float(len(r)) for r in responses]


ORIGINALS = {  # prompt id → (chosen, rejected): texts with the spacing and characters a copy could lose
    "a": ("  Sure, here it is.\n\n1. one\n2. two  ", "no"),
    "b": ("I can't help with that — it's unsafe. 🙂", "Here's how:\tstep one…\r\nstep two, then three, then the rest.\r\n"),
}


def union_generations() -> pa.Table:
    rows = []
    for prompt_id, (chosen, rejected) in ORIGINALS.items():
        prompt = [{"role": "user", "content": f"question {prompt_id}"}]
        for index, (text, label) in enumerate(((chosen, "chosen"), (rejected, "rejected"))):
            rows.append(dict(key=f"{prompt_id}-d{index}", response=text, steering="dataset", source_label=label, source_rank=index))
        for steering in ("pos", "neg"):
            for index in range(2):
                rows.append(
                    dict(key=f"{prompt_id}-{steering}{index}", response=f"{steering} answer {'x' * (index + 3)}", steering=steering)
                )
        for row in rows[-6:]:
            row.update(prompt_id=prompt_id, prompt=prompt, status="ok", round=0, sample_index=0)
            if row["steering"] != "dataset":
                row.update(finish_reason="stop", model="fake", backend="vllm", system_mode="system")
            else:
                row.update(backend="dataset", system_mode="none")
    return pa.Table.from_pylist([{name: row.get(name) for name in GENERATIONS.names} for row in rows], schema=GENERATIONS)


@pytest.fixture
def union_run(tmp_path: Path, monkeypatch) -> Path:
    run = tmp_path / "run"
    atomic_write_table(run / "generations" / "part-000000.parquet", union_generations())
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    scored = CliRunner().invoke(cli, ["score", str(run), "--scorer", "python:test_rank_dataset:score_by_length", "--no-progress"])
    assert scored.exit_code == 0, scored.output
    return run


def test_dataset_answers_are_scored_as_answers_to_the_neutral_prompt(union_run: Path):
    scored = pq.read_table(union_run / "scored").to_pylist()
    dataset = [row for row in scored if row["steering"] == "dataset"]
    assert len(dataset) == 4 and all(row["score_status"] == "ok" for row in dataset)
    assert all(row["score"] == len(row["response"]) for row in dataset)
    assert {(row["source_label"], row["source_rank"]) for row in dataset} == {("chosen", 0), ("rejected", 1)}


def test_every_original_pair_reaches_the_trl_export_byte_identical(union_run: Path):
    runner = CliRunner()
    ranked = runner.invoke(cli, ["rank", str(union_run), "--pairs", "original,chosen-vs-neg,pos-vs-rejected"])
    assert ranked.exit_code == 0, ranked.output
    assert (
        "pairs by strategy: original 2, chosen-vs-neg 4, pos-vs-rejected 4; dataset answers among the candidates 4, pairs with "
        "both sides from the dataset 2, with a generated side 8"
    ) in ranked.output
    pairs = pq.read_table(union_run / "ranked" / "pairs.parquet")
    assert sorted(pairs.column("strategy").to_pylist()) == ["chosen-vs-neg"] * 4 + ["original"] * 2 + ["pos-vs-rejected"] * 4
    exported = runner.invoke(cli, ["export", str(union_run), "--format", "trl"])
    assert exported.exit_code == 0, exported.output
    rows = pq.read_table(union_run / "export" / "trl" / "train.parquet").to_pylist()
    texts = {(row["prompt"][-1]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"]) for row in rows}
    for prompt_id, (chosen, rejected) in ORIGINALS.items():
        assert (f"question {prompt_id}", chosen, rejected) in texts
    assert len(rows) == 10
    assert runner.invoke(cli, ["export", str(union_run), "--format", "h4"]).exit_code == 0  # h4 carries each side's source
    h4 = pq.read_table(union_run / "export" / "h4" / "train.parquet").to_pylist()
    sides = {
        (r["strategy"], r["steering_chosen"], r["source_label_chosen"], r["steering_rejected"], r["source_label_rejected"]) for r in h4
    }
    assert sides == {
        ("original", "dataset", "chosen", "dataset", "rejected"),
        ("chosen-vs-neg", "dataset", "chosen", "neg", None),
        ("pos-vs-rejected", "pos", None, "dataset", "rejected"),
    }
    originals = [r for r in h4 if r["strategy"] == "original"]
    assert {(r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in originals} == set(ORIGINALS.values())


def test_the_ranked_export_keeps_the_dataset_answers_as_candidates(union_run: Path):
    runner = CliRunner()
    assert runner.invoke(cli, ["rank", str(union_run), "--dataset-order", "keep"]).exit_code == 0
    assert runner.invoke(cli, ["export", str(union_run), "--format", "ranked"]).exit_code == 0
    rows = {row["prompt_id"]: row for row in pq.read_table(union_run / "export" / "ranked" / "train.parquet").to_pylist()}
    chosen, rejected = ORIGINALS["b"]
    b = rows["b"]
    assert b["steering"].count("dataset") == 2 and len(b["responses"]) == 6
    assert len(rejected) > len(chosen) and b["responses"].index(chosen) < b["responses"].index(rejected)  # kept: chosen above
    assert b["finish_reason"][b["responses"].index(chosen)] is None  # unknown: the trainer renders it finished
    assert b["scores"] == sorted(b["scores"], reverse=True)
    assert sorted(label for label in b["source_label"] if label) == ["chosen", "rejected"]


# ------------------------------------------------------------------ end to end from a preference file (the real reader)
def expand_and_rank(server_url: str, source: Path, run: Path, monkeypatch, *rank_options: str, keep: bool = True) -> CliRunner:
    from conftest import served_generate_args

    runner = CliRunner()
    keeping = ["--responses", "keep"] if keep else []
    generated = runner.invoke(cli, [*served_generate_args(source, server_url, run, num_pos=2, num_neg=2), *keeping])
    assert generated.exit_code == 0, generated.output
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    scored = runner.invoke(cli, ["score", str(run), "--scorer", "python:test_rank_dataset:score_by_length", "--no-progress"])
    assert scored.exit_code == 0, scored.output
    ranked = runner.invoke(cli, ["rank", str(run), *rank_options])
    assert ranked.exit_code == 0, ranked.output
    return runner


@pytest.mark.parametrize("layout", ["hh", "ultrafeedback", "pku"])
def test_every_pair_of_a_preference_file_reaches_the_trl_export_byte_identical(layout: str, fake_server, tmp_path: Path, monkeypatch):
    """The expected pairs are read from the fixture here, not by neat_data's reader."""
    import json

    from conftest import REPO

    source = REPO / "tests" / "data" / "expand" / f"{layout}.jsonl"
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if layout == "hh":
        expected = {(r["chosen"].rsplit("\n\nAssistant: ", 1)[1], r["rejected"].rsplit("\n\nAssistant: ", 1)[1]) for r in rows}
    elif layout == "ultrafeedback":
        expected = {(r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in rows}
    else:  # PKU: the safer response is the preferred one (the reader's default)
        expected = {(r[f"response_{r['safer_response_id']}"], r[f"response_{1 - r['safer_response_id']}"]) for r in rows}
    run = tmp_path / "run"
    runner = expand_and_rank(fake_server().url, source, run, monkeypatch, "--pairs", "original,chosen-vs-neg,pos-vs-rejected")
    exported = runner.invoke(cli, ["export", str(run), "--format", "trl"])
    assert exported.exit_code == 0, exported.output
    trl = pq.read_table(run / "export" / "trl" / "train.parquet").to_pylist()
    got = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in trl}
    assert expected <= got
    pairs = pq.read_table(run / "ranked" / "pairs.parquet").to_pylist()
    originals = [(p["chosen"], p["rejected"]) for p in pairs if p["strategy"] == "original"]
    assert sorted(originals) == sorted(expected)
    assert {p["strategy"] for p in pairs} == {"original", "chosen-vs-neg", "pos-vs-rejected"}
    assert all(p["steering_rejected"] == "neg" for p in pairs if p["strategy"] == "chosen-vs-neg")


def test_the_export_and_the_card_name_the_source_dataset_with_its_hash_licence_and_counts(fake_server, tmp_path: Path, monkeypatch):
    import hashlib
    import json
    import shutil

    import mlcroissant
    from conftest import REPO
    from fakehub import FakeHub

    folder = tmp_path / "my-pairs"
    folder.mkdir()
    source = shutil.copy(REPO / "tests" / "data" / "expand" / "hh.jsonl", folder / "hh.jsonl")
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# My pairs\n", encoding="utf-8")
    run = tmp_path / "run"
    runner = expand_and_rank(fake_server().url, Path(source), run, monkeypatch, "--pairs", "original,chosen-vs-neg")
    exported = runner.invoke(cli, ["export", str(run), "--format", "trl"])
    assert exported.exit_code == 0, exported.output
    path = run / "export" / "trl" / "croissant.json"
    mlcroissant.Dataset(jsonld=str(path))  # raises on a validation error
    (entity,) = json.loads(path.read_text(encoding="utf-8"))["prov:wasDerivedFrom"]
    assert entity["name"] == str(source) and entity["license"] == "cc-by-4.0"
    assert entity["files"] == [{"name": "hh.jsonl", "sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest()}]
    assert entity["counts"] == {
        "rows_original": 6,  # 3 pairs, 2 answers each
        "rows_generated": 12,  # 3 prompts × (2 pos + 2 neg)
        "pairs_original": 3,
        "pairs_new": 6,
        "pairs_by_strategy": {"original": 3, "chosen-vs-neg": 6},
    }
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    pushed = runner.invoke(cli, ["push", str(run), "--repo-id", "me/expanded", "--backoff-base", "0", "--format", "trl"])
    assert pushed.exit_code == 0, pushed.output
    card = (hub.repo("me/expanded") / "README.md").read_text(encoding="utf-8")
    line = next(line for line in card.splitlines() if line.startswith("- **Derived from**"))
    assert f"`{source}`" in line and "licence: cc-by-4.0" in line and hashlib.sha256(Path(source).read_bytes()).hexdigest() in line
    assert "6 original rows (the dataset's own answers), 12 generated; pairs: 3 with both sides from the dataset, 6 with a" in line


def test_a_run_on_the_prompts_alone_names_no_source(fake_server, tmp_path: Path, monkeypatch):
    import json

    from conftest import REPO

    run = tmp_path / "run"
    runner = expand_and_rank(fake_server().url, REPO / "tests" / "data" / "expand" / "hh.jsonl", run, monkeypatch, keep=False)
    assert runner.invoke(cli, ["export", str(run), "--format", "trl"]).exit_code == 0
    assert "prov:wasDerivedFrom" not in json.loads((run / "export" / "trl" / "croissant.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ the viewer
def test_the_page_shows_the_dataset_answers_beside_the_generated_ones_with_their_label(union_run: Path):
    import base64
    import gzip
    import json
    import re

    from neat_data.view import ViewConfig, build_view

    assert CliRunner().invoke(cli, ["rank", str(union_run), "--pairs", "original,chosen-vs-neg"]).exit_code == 0
    build_view(ViewConfig(run=union_run))
    html = (union_run / "view.html").read_text(encoding="utf-8")
    encoded = re.search(r'<script type="application/octet-stream" id="data-index">([^<]*)</script>', html).group(1)
    index = json.loads(gzip.decompress(base64.b64decode(encoded)))
    R, S = index["responses"], index["strings"]
    shown = {
        R["key"][r]: (S["steering"][R["st"][r]], S["src"][R["src"][r]] if R["src"][r] >= 0 else None, R["srank"][r])
        for r in range(len(R["key"]))
    }
    assert shown["b-d0"] == ("dataset", "chosen", 0) and shown["b-d1"] == ("dataset", "rejected", 1)
    assert shown["b-pos0"] == ("pos", None, None) and len(shown) == 12

    from neat_data.view.browser import launch, missing, open_view

    if missing() is not None:
        pytest.skip(f"the rendering needs a real browser: {missing()}")
    with launch() as browser:
        page = open_view(browser, union_run / "view.html")
        page.wait_for_selector("body[data-texts='1']", state="attached")
        page.locator("#prompt-list tbody tr", has_text="question b").first.click()
        page.wait_for_selector("#detail .response")
        headings = page.locator("#detail h4").all_inner_texts()
        assert "the dataset's own answers (2)" in headings and "positive prompt (2)" in headings
        dataset = [card for card in page.locator("#detail .response").all() if card.get_attribute("data-steering") == "dataset"]
        metas = [card.locator(".meta").inner_text() for card in dataset]
        assert any("original: chosen (rank 0 in the dataset)" in meta for meta in metas)
        assert any("original: rejected (rank 1 in the dataset)" in meta for meta in metas)
        assert "chosen dataset chosen (rank 0 in the dataset) over dataset rejected" in page.locator("#detail ul.pairs").inner_text()


def test_train_reads_the_expanded_lists_and_ends_the_dataset_answers_as_finished(union_run: Path, tiny_model: Path):
    """A dataset answer's finish reason is null (unknown): the trainer renders it finished (end-of-turn token) and does
    not count it as cut short (neat_train.json's data_stats)."""
    import json

    runner = CliRunner()
    assert runner.invoke(cli, ["rank", str(union_run), "--dataset-order", "keep"]).exit_code == 0
    assert runner.invoke(cli, ["export", str(union_run), "--format", "ranked"]).exit_code == 0
    trained = runner.invoke(cli, ["train", str(union_run), "--model", str(tiny_model), "--prompts-per-batch", "2"])
    assert trained.exit_code == 0, trained.output
    stats = json.loads((union_run / "model" / "neat_train.json").read_text(encoding="utf-8"))["data_stats"]
    assert stats["prompts"] == 2 and stats["candidates"] == 12  # 2 dataset + 4 generated answers per prompt
    assert stats["unknown_finish_candidates"] == 4 and stats["unfinished_candidates"] == 0


def test_self_contrast_scores_the_dataset_answers_under_the_prompts_pair(fake_server, tiny_model: Path, tmp_path: Path):
    """Self-contrast needs the pair's two steering texts: a dataset answer is scored with those its prompt's generated
    answers were steered by, as an answer to the neutral prompt, like them."""
    from conftest import REPO, served_generate_args

    run = tmp_path / "run"
    source = REPO / "tests" / "data" / "expand" / "hh.jsonl"
    runner = CliRunner()
    generated = runner.invoke(cli, [*served_generate_args(source, fake_server().url, run), "--responses", "keep"])
    assert generated.exit_code == 0, generated.output
    scored = runner.invoke(
        cli, ["score", str(run), "--scorer", "self-contrast", "--model", str(tiny_model), "--device", "cpu", "--no-progress"]
    )
    assert scored.exit_code == 0, scored.output
    rows = pq.read_table(run / "scored").to_pylist()
    dataset = [row for row in rows if row["steering"] == "dataset"]
    assert len(dataset) == 6 and all(row["score_status"] == "ok" and row["score"] is not None for row in dataset)
    assert {row["scorer"] for row in rows} == {f"self-contrast:{tiny_model}"}
