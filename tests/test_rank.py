"""Rank: hand-built scored tables → exact ranked lists and pairs; ties, degenerate pairs, margins, empty groups."""

from __future__ import annotations

import pyarrow as pa
import pytest

from neat_data.schemas import SCORED
from neat_data.stages.rank import RankConfig, rank_tables

PROMPT = [{"role": "user", "content": "q"}]


def row(prompt_id: str, key: str, response: str, score: float | None, steering: str = "pos", status: str = "ok") -> dict:
    base = {name: None for name in SCORED.names}
    base.update(key=key, prompt_id=prompt_id, prompt=PROMPT, response=response, steering=steering, status="ok",
                score=score, raw_score=score, score_status=status)
    return base


def table(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SCORED)


SCORED_ROWS = table(
    row("p1", "a", "good answer", 2.0, "pos"),
    row("p1", "b", "bad answer", -1.0, "neg"),
    row("p1", "c", "ok answer", 0.5, "pos"),
    row("p1", "d", "meh answer", 0.5, "neg"),
    row("p1", "e", "failed", None, "pos", status="error"),
    row("p2", "f", "only one", 1.0, "pos"),
    row("p3", "g", "same  text", 1.0, "pos"),
    row("p3", "h", "same text", 0.0, "neg"),
)


def test_ranked_lists_best_first_with_failed_candidates_left_out():
    lists, _, summary = rank_tables(RankConfig(run="."), SCORED_ROWS)
    by_prompt = {r["prompt_id"]: r for r in lists.to_pylist()}
    assert by_prompt["p1"]["responses"] == ["good answer", "ok answer", "meh answer", "bad answer"]
    assert by_prompt["p1"]["scores"] == [2.0, 0.5, 0.5, -1.0] and by_prompt["p1"]["steering"] == ["pos", "pos", "neg", "neg"]
    assert by_prompt["p1"]["keys"] == ["a", "c", "d", "b"]  # the tie c/d is ordered by key
    assert by_prompt["p2"]["responses"] == ["only one"]
    assert summary.prompts == 3 and summary.candidates == 7


def test_best_vs_worst_drops_degenerate_and_skips_single_candidate_prompts():
    _, pairs, summary = rank_tables(RankConfig(run="."), SCORED_ROWS)
    assert [(p["prompt_id"], p["chosen"], p["rejected"], p["score_chosen"], p["score_rejected"]) for p in pairs.to_pylist()] == [
        ("p1", "good answer", "bad answer", 2.0, -1.0)]
    assert summary.dropped == {"degenerate": 1} and summary.pairs_kept == 1 and summary.margins["mean"] == 3.0


def test_all_pairs_with_ties_and_margins():
    _, pairs, summary = rank_tables(RankConfig(run=".", pairs="all-pairs", min_margin=1.0), SCORED_ROWS)
    kept = {(p["chosen"], p["rejected"]) for p in pairs.to_pylist()}
    assert kept == {("good answer", "ok answer"), ("good answer", "meh answer"), ("good answer", "bad answer"),
                    ("ok answer", "bad answer"), ("meh answer", "bad answer")}
    assert summary.dropped == {"tie": 1, "degenerate": 1}
    _, _, strict = rank_tables(RankConfig(run=".", pairs="all-pairs", min_margin=2.0), SCORED_ROWS)
    assert strict.pairs_kept == 1 and strict.dropped == {"tie": 1, "margin": 4, "degenerate": 1}  # only good-bad (gap 3) >= 2


def test_pos_vs_neg_by_construction_ignores_scores_and_by_score_orients_pairs():
    _, built, summary = rank_tables(RankConfig(run=".", pairs="pos-vs-neg"), SCORED_ROWS)
    assert {(p["chosen"], p["rejected"]) for p in built.to_pylist()} == {
        ("good answer", "meh answer"), ("good answer", "bad answer"), ("ok answer", "meh answer"), ("ok answer", "bad answer")}
    assert all(p["steering_chosen"] == "pos" and p["steering_rejected"] == "neg" for p in built.to_pylist())
    assert summary.dropped == {"degenerate": 1}
    flipped = table(row("p", "a", "pos text", -1.0, "pos"), row("p", "b", "neg text", 3.0, "neg"))
    _, by_construction, _ = rank_tables(RankConfig(run=".", pairs="pos-vs-neg"), flipped)
    _, by_score, _ = rank_tables(RankConfig(run=".", pairs="pos-vs-neg", pos_vs_neg_by="score"), flipped)
    assert by_construction.to_pylist()[0]["chosen"] == "pos text"
    assert by_score.to_pylist()[0]["chosen"] == "neg text" and by_score.to_pylist()[0]["steering_chosen"] == "neg"


def test_empty_table_gives_empty_outputs():
    lists, pairs, summary = rank_tables(RankConfig(run="."), SCORED.empty_table())
    assert lists.num_rows == pairs.num_rows == summary.prompts == 0 and summary.margins == {}


def test_min_margin_must_not_be_negative():
    with pytest.raises(Exception):
        RankConfig(run=".", min_margin=-1)
