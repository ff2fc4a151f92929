"""Rank: hand-built scored tables → exact ranked lists, pairs and dropped pairs; ties, degenerate pairs, margins,
truncated candidates, empty groups."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from neat_data.core.schemas import SCORED
from neat_data.stages.rank.stage import RankConfig, rank_tables

PROMPT = [{"role": "user", "content": "q"}]


def row(
    prompt_id: str, key: str, response: str, score: float | None, steering: str = "pos", status: str = "ok", finish: str | None = "stop"
) -> dict:
    base = {name: None for name in SCORED.names}
    base.update(
        key=key,
        prompt_id=prompt_id,
        prompt=PROMPT,
        response=response,
        steering=steering,
        status="ok",
        score=score,
        raw_score=score,
        score_status=status,
        finish_reason=finish,
    )
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
    lists, _, _, summary = rank_tables(RankConfig(run="."), SCORED_ROWS)
    by_prompt = {r["prompt_id"]: r for r in lists.to_pylist()}
    assert by_prompt["p1"]["responses"] == ["good answer", "ok answer", "meh answer", "bad answer"]
    assert by_prompt["p1"]["scores"] == [2.0, 0.5, 0.5, -1.0] and by_prompt["p1"]["steering"] == ["pos", "pos", "neg", "neg"]
    assert by_prompt["p1"]["keys"] == ["a", "c", "d", "b"]  # the tie c/d is ordered by key
    assert by_prompt["p2"]["responses"] == ["only one"]
    assert summary.prompts == 3 and summary.candidates == 7


def test_best_vs_worst_drops_degenerate_and_skips_single_candidate_prompts():
    _, pairs, _, summary = rank_tables(RankConfig(run="."), SCORED_ROWS)
    assert [(p["prompt_id"], p["chosen"], p["rejected"], p["score_chosen"], p["score_rejected"]) for p in pairs.to_pylist()] == [
        ("p1", "good answer", "bad answer", 2.0, -1.0)
    ]
    assert summary.dropped == {"degenerate": 1} and summary.pairs_kept == 1 and summary.margins["mean"] == 3.0


def test_all_pairs_with_ties_and_margins():
    _, pairs, _, summary = rank_tables(RankConfig(run=".", pairs="all-pairs", min_margin=1.0), SCORED_ROWS)
    kept = {(p["chosen"], p["rejected"]) for p in pairs.to_pylist()}
    assert kept == {
        ("good answer", "ok answer"),
        ("good answer", "meh answer"),
        ("good answer", "bad answer"),
        ("ok answer", "bad answer"),
        ("meh answer", "bad answer"),
    }
    assert summary.dropped == {"tie": 1, "degenerate": 1}
    _, _, _, strict = rank_tables(RankConfig(run=".", pairs="all-pairs", min_margin=2.0), SCORED_ROWS)
    assert strict.pairs_kept == 1 and strict.dropped == {"tie": 1, "margin": 4, "degenerate": 1}  # only good-bad (gap 3) >= 2


def test_pos_vs_neg_by_construction_ignores_scores_and_by_score_orients_pairs():
    _, built, _, summary = rank_tables(RankConfig(run=".", pairs="pos-vs-neg"), SCORED_ROWS)
    assert {(p["chosen"], p["rejected"]) for p in built.to_pylist()} == {
        ("good answer", "meh answer"),
        ("good answer", "bad answer"),
        ("ok answer", "meh answer"),
        ("ok answer", "bad answer"),
    }
    assert all(p["steering_chosen"] == "pos" and p["steering_rejected"] == "neg" for p in built.to_pylist())
    assert summary.dropped == {"degenerate": 1}
    flipped = table(row("p", "a", "pos text", -1.0, "pos"), row("p", "b", "neg text", 3.0, "neg"))
    _, by_construction, _, _ = rank_tables(RankConfig(run=".", pairs="pos-vs-neg"), flipped)
    _, by_score, _, _ = rank_tables(RankConfig(run=".", pairs="pos-vs-neg", pos_vs_neg_by="score"), flipped)
    assert by_construction.to_pylist()[0]["chosen"] == "pos text"
    assert by_score.to_pylist()[0]["chosen"] == "neg text" and by_score.to_pylist()[0]["steering_chosen"] == "neg"


def test_empty_table_gives_empty_outputs():
    lists, pairs, _, summary = rank_tables(RankConfig(run="."), SCORED.empty_table())
    assert lists.num_rows == pairs.num_rows == summary.prompts == 0 and summary.margins == {}


def test_min_margin_must_not_be_negative():
    with pytest.raises(ValidationError):
        RankConfig(run=".", min_margin=-1)


TRUNCATED_ROWS = table(
    row("p1", "a", "best but cut", 3.0, "pos", finish="length"),
    row("p1", "b", "good", 2.0, "pos"),
    row("p1", "c", "fine", 1.0, "neg", finish=None),  # unknown finish reason: kept
    row("p1", "d", "worst", 0.0, "neg"),
    row("p2", "e", "cut", 1.0, "pos", finish="length"),
    row("p2", "f", "also cut", 0.0, "neg", finish="length"),
)


def test_finish_reasons_travel_to_lists_and_pairs():
    lists, pairs, dropped, summary = rank_tables(RankConfig(run="."), TRUNCATED_ROWS)
    by_prompt = {r["prompt_id"]: r for r in lists.to_pylist()}
    assert by_prompt["p1"]["finish_reason"] == ["length", "stop", None, "stop"]
    assert [(p["key_chosen"], p["finish_reason_chosen"], p["key_rejected"], p["finish_reason_rejected"]) for p in pairs.to_pylist()] == [
        ("a", "length", "d", "stop"),
        ("e", "length", "f", "length"),
    ]
    assert dropped.num_rows == 0 and summary.truncated_left_out == 0 and summary.candidates == 6


def test_drop_truncated_leaves_them_out_and_records_the_lost_pairs():
    lists, pairs, dropped, summary = rank_tables(RankConfig(run=".", drop_truncated=True), TRUNCATED_ROWS)
    assert [(r["prompt_id"], r["keys"]) for r in lists.to_pylist()] == [("p1", ["b", "c", "d"])]  # p2 had nothing left
    assert [(p["key_chosen"], p["key_rejected"]) for p in pairs.to_pylist()] == [("b", "d")]  # best-vs-worst of what is left
    assert dropped.column("strategy").to_pylist() == ["best-vs-worst"] * 2
    assert dropped.drop_columns(["strategy"]).to_pylist() == [
        {"prompt_id": "p1", "key_chosen": "a", "key_rejected": "d", "score_chosen": 3.0, "score_rejected": 0.0, "reason": "truncated"},
        {"prompt_id": "p2", "key_chosen": "e", "key_rejected": "f", "score_chosen": 1.0, "score_rejected": 0.0, "reason": "truncated"},
    ]
    assert summary.truncated_left_out == 3 and summary.candidates == 3 and summary.prompts == 1
    assert summary.dropped == {"truncated": 2} and summary.pairs_kept == 1
    assert "candidates 3, truncated candidates left out 3, pairs kept 1, dropped: truncated 2" in summary.lines()[0]
    # pos-vs-neg: exactly the pairs with a truncated side are lost
    _, pairs, dropped, _ = rank_tables(RankConfig(run=".", pairs="pos-vs-neg", drop_truncated=True), TRUNCATED_ROWS)
    assert {(p["key_chosen"], p["key_rejected"]) for p in pairs.to_pylist()} == {("b", "c"), ("b", "d")}
    assert {(d["key_chosen"], d["key_rejected"], d["reason"]) for d in dropped.to_pylist()} == {
        ("a", "c", "truncated"),
        ("a", "d", "truncated"),
        ("e", "f", "truncated"),
    }


def test_dropped_pairs_name_both_sides_and_the_reason():
    _, _, dropped, summary = rank_tables(RankConfig(run=".", pairs="all-pairs", min_margin=2.0), SCORED_ROWS)
    reasons = {(d["key_chosen"], d["key_rejected"]): d["reason"] for d in dropped.to_pylist()}
    assert reasons[("c", "d")] == "tie" and reasons[("g", "h")] == "degenerate" and reasons[("a", "c")] == "margin"
    assert dropped.num_rows == 6 and summary.dropped == {"tie": 1, "margin": 4, "degenerate": 1}


def test_rank_cli_writes_dropped_parquet_and_drops_truncated(tmp_path):
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from neat_data.cli import cli
    from neat_data.core.runfolder import atomic_write_table
    from neat_data.core.schemas import DROPPED_PAIRS

    run = tmp_path / "run"
    atomic_write_table(run / "scored" / "part-000000.parquet", TRUNCATED_ROWS)
    result = CliRunner().invoke(cli, ["rank", str(run), "--drop-truncated"])
    assert result.exit_code == 0, result.output
    assert "truncated candidates left out 3" in result.output and "dropped: truncated 2" in result.output
    dropped = pq.read_table(run / "ranked" / "dropped.parquet")
    assert dropped.schema == DROPPED_PAIRS and dropped.column("reason").to_pylist() == ["truncated", "truncated"]
    assert pq.read_table(run / "ranked" / "lists.parquet").column("keys").to_pylist() == [["b", "c", "d"]]


def test_degenerate_check_in_arrow_is_pythons_whitespace_normalisation_for_every_code_point():
    """`same_when_normalised` settles most pairs in Arrow; it must agree with ' '.join(text.split()) for every code
    point, whitespace or not, wherever it stands (inside, around, alone, in runs)."""
    from neat_data.stages.rank.stage import normalise, same_when_normalised

    code_points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    first: list[str] = []
    second: list[str] = []
    for c in code_points:
        first += [f"a{c}b", f"{c}{c}a b{c}", c, f"{c}x", f"x\t{c}"]
        second += ["a b", "a b", "", "x", "x"]
    got = same_when_normalised(pa.array(first), pa.array(second))
    assert got.tolist() == [normalise(a) == normalise(b) for a, b in zip(first, second)]
    assert sum(got) > 4 * 29  # Python's 29 whitespace characters (and only they) make most of these pairs equal
    assert same_when_normalised(pa.array(["", " ", "a"]), pa.array(["\u3000", "", "a\u2028"])).tolist() == [True, True, True]


# ------------------------------------------------------------------ the columnar rank against a plain-Python one
def reference_rank(config: RankConfig, rows: list[dict]) -> tuple[list, list, list]:
    """What the module docstring says rank does, list by list in Python: (lists as [prompt_id, keys best first],
    kept pairs as (prompt_id, chosen key, rejected key), dropped pairs as (prompt_id, chosen, rejected, reason))."""
    from itertools import combinations

    from neat_data.stages.rank.stage import normalise

    def strategy(candidates: list[dict]) -> list[tuple[dict, dict, bool]]:
        n = len(candidates)
        if n < 2:
            return []
        if config.pairs == ["best-vs-worst"]:
            return [(candidates[0], candidates[-1], True)]
        if config.pairs == ["all-pairs"]:
            return [(candidates[i], candidates[j], True) for i, j in combinations(range(n), 2)]
        pos = [i for i, c in enumerate(candidates) if c["steering"] == "pos"]
        neg = [i for i, c in enumerate(candidates) if c["steering"] == "neg"]
        if config.pos_vs_neg_by == "construction":
            return [(candidates[p], candidates[q], False) for p in pos for q in neg]
        return [(candidates[min(p, q)], candidates[max(p, q)], True) for p in pos for q in neg]

    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["score_status"] == "ok":
            groups.setdefault(r["prompt_id"], []).append(r)
    lists, kept, dropped = [], [], []
    for prompt_id in sorted(groups):
        everyone = sorted(groups[prompt_id], key=lambda r: (-r["score"], r["key"]))
        cut = [r for r in everyone if r["finish_reason"] == "length"] if config.drop_truncated else []
        whole = [r for r in everyone if r not in cut]
        if whole or not config.drop_truncated:  # a prompt whose every candidate was cut has no list
            lists.append([prompt_id, [r["key"] for r in (whole if config.drop_truncated else everyone)]])
        if cut:
            for chosen, rejected, _ in strategy(everyone):
                if chosen in cut or rejected in cut:
                    dropped.append((prompt_id, chosen["key"], rejected["key"], "truncated"))
        for chosen, rejected, by_score in strategy(whole):
            gap = chosen["score"] - rejected["score"]
            reason = (
                "degenerate"
                if normalise(chosen["response"]) == normalise(rejected["response"])
                else "tie"
                if by_score and gap == 0
                else "margin"
                if by_score and gap < config.min_margin
                else None
            )
            if reason:
                dropped.append((prompt_id, chosen["key"], rejected["key"], reason))
            else:
                kept.append((prompt_id, chosen["key"], rejected["key"]))
    return lists, kept, dropped


def random_scored(seed: int, prompts: int = 60) -> pa.Table:
    import random

    rng = random.Random(seed)
    rows = []
    for p in range(prompts):
        for c in range(rng.randint(0, 6)):
            rows.append(
                row(
                    f"p{rng.randint(0, 10**6):07d}" if c == 0 and p % 7 == 0 else f"p{p:03d}",
                    f"{rng.getrandbits(128):032x}",
                    rng.choice(["same  answer", " same answer\n", "other", "a longer answer here", f"text {rng.random()}"]),
                    rng.choice([0.0, 0.5, 1.0, rng.uniform(-2, 2)]),  # many ties
                    rng.choice(["pos", "neg", "none"]),
                    status=rng.choice(["ok"] * 9 + ["error"]),
                    finish=rng.choice(["stop", "stop", "length", None]),
                )
            )
    rng.shuffle(rows)
    return table(*rows)


@pytest.mark.parametrize("pairs", ["best-vs-worst", "pos-vs-neg", "all-pairs"])
@pytest.mark.parametrize("extra", [{}, {"drop_truncated": True}, {"min_margin": 0.7}, {"pos_vs_neg_by": "score", "drop_truncated": True}])
def test_the_columnar_rank_is_the_plain_python_rank(pairs: str, extra: dict):
    """Every strategy and option, on shuffled tables with ties, whitespace-only differences, error rows, cut answers
    and empty groups; and the same whatever the input's chunking, with or without a row left out."""
    config = RankConfig(run=".", pairs=pairs, **extra)
    for seed in range(4):
        scored = random_scored(seed)
        if seed == 3:  # every row ok: the path that gathers without leaving any row out
            scored = scored.set_column(scored.schema.get_field_index("score_status"), "score_status", pa.array(["ok"] * scored.num_rows))
        lists, kept, dropped, summary = rank_tables(config, scored)
        expected_lists, expected_kept, expected_dropped = reference_rank(config, scored.to_pylist())
        assert [[r["prompt_id"], r["keys"]] for r in lists.to_pylist()] == expected_lists
        assert [(r["prompt_id"], r["key_chosen"], r["key_rejected"]) for r in kept.to_pylist()] == expected_kept
        assert [(r["prompt_id"], r["key_chosen"], r["key_rejected"], r["reason"]) for r in dropped.to_pylist()] == expected_dropped
        assert summary.pairs_kept == len(expected_kept) and sum(summary.dropped.values()) == len(expected_dropped)
        third = scored.num_rows // 3
        chunked = pa.concat_tables([scored.slice(0, third), scored.slice(third, third), scored.slice(2 * third)])
        again = rank_tables(config, chunked)
        assert all(a.equals(b) for a, b in zip(again[:3], (lists, kept, dropped))) and again[3] == summary
