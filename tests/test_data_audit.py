"""`neat-data audit RUN`: crafted ranked runs whose answers are known — chosen always longer (length AUC 1, a failing
verdict, exit 5 under --fail-on), length balanced (AUC ½), known refusals (flip rates), duplicates, truncation — read
back from audit.json / audit.md / audit.png and the manifest, through the real CLI."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from neat_data.cli import cli
from neat_data.core.manifest import read_manifest
from neat_data.core.runfolder import ShardedTable
from neat_data.core.schemas import SCORED
from neat_data.stages.rank.stage import RankConfig, run_rank

WORDS = "apple river stone cloud garden pencil ocean window silver forest candle mirror planet velvet harbor".split()


def text(seed: int, words: int) -> str:
    """An answer of exactly `words` words, drawn from ~1500 (so two seeds share hardly a word 3-gram)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(words))


def scored_row(prompt: int, steering: str, response: str, score: float, *, tokens: int | None, finish: str = "stop") -> dict:
    row = {name: None for name in SCORED.names}
    row.update(
        key=f"p{prompt:04d}-{steering}",
        prompt_id=f"p{prompt:04d}",
        prompt=[{"role": "user", "content": f"question {prompt}"}],
        steering=steering,
        sample_index=0,
        response=response,
        finish_reason=finish,
        status="ok",
        completion_tokens=tokens,
        score=score,
        raw_score=score,
        score_status="ok",
    )
    return row


def make_run(folder: Path, rows: list[dict], **rank: object) -> Path:
    ShardedTable(folder / "scored", SCORED).append(rows)
    run_rank(RankConfig(run=folder, **rank))
    return folder


def audit(run: Path, *extra: str) -> tuple[int, str, dict]:
    result = CliRunner().invoke(cli, ["audit", str(run), "--resamples", "200", *extra])
    report = json.loads((run / "audit" / "audit.json").read_text()) if (run / "audit" / "audit.json").is_file() else {}
    return result.exit_code, result.output, report


def verdict(report: dict, check: str) -> dict:
    return next(c for c in report["checks"] if c["check"] == check)


def test_chosen_always_longer_gives_length_auc_one_and_a_failing_verdict(tmp_path):
    # pos answers 30–40 tokens, neg answers 5–10: pos scores higher, so the chosen (pos) is always the longer one
    rows = []
    for p in range(60):
        rows.append(scored_row(p, "pos", text(p, 30 + p % 11), 1.0 + p / 100, tokens=40 + p % 11))
        rows.append(scored_row(p, "neg", text(p + 500, 5 + p % 6), -1.0, tokens=5 + p % 6))
    run = make_run(tmp_path / "run", rows)
    code, output, report = audit(run)
    assert code == 0  # a failing verdict alone does not stop the command
    length = report["length"]
    assert length["unit"]["value"] == "tokens"  # the rows' own completion_tokens, not words
    assert length["length_auc"]["value"] == 1.0 and length["share_chosen_longer"]["value"] == 1.0
    low, high = length["length_auc"]["ci95"]
    assert low == 1.0 and high == 1.0
    assert length["by_combination"]["value"]["pos>neg"]["pairs"] == 60
    assert length["length_ratio"]["value"]["median"] > 3
    check = verdict(report, "length")
    assert check["verdict"] == "fail" and check["threshold"] == 0.65 and "length: FAIL" in output
    assert all("definition" in item for item in length.values())
    assert (run / "audit" / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (run / "audit" / "audit.md").read_text()
    assert "length: FAIL" in markdown and "| pos>neg | 60 |" in markdown
    assert read_manifest(run).stage("audit").entry()["summary"]["length"]["verdict"] == "fail"
    # --fail-on length: the same report, then exit 5 with one line
    code, output, again = audit(run, "--fail-on", "length,duplicates")
    assert code == 5 and again["length"]["length_auc"]["value"] == 1.0
    assert output.strip().splitlines()[-1].startswith("error: ") and "length" in output.strip().splitlines()[-1]
    # a looser threshold, given as an option, turns the verdict around
    _, _, loose = audit(run, "--length-separability-max", "1.0")
    assert verdict(loose, "length")["verdict"] == "pass" and verdict(loose, "length")["threshold"] == 1.0


def test_balanced_lengths_give_length_auc_near_one_half(tmp_path):
    rows = []
    for p in range(200):
        long_pos = p % 2 == 0  # half the prompts: the chosen (pos) is the longer, half: the shorter
        rows.append(scored_row(p, "pos", text(p, 30 if long_pos else 10), 1.0, tokens=30 if long_pos else 10))
        rows.append(scored_row(p, "neg", text(p + 999, 10 if long_pos else 30), -1.0, tokens=10 if long_pos else 30))
    run = make_run(tmp_path / "run", rows)
    code, _, report = audit(run)
    auc = report["length"]["length_auc"]
    assert code == 0 and auc["value"] == 0.5
    assert auc["ci95"][0] < 0.5 < auc["ci95"][1] and auc["ci95"][1] - auc["ci95"][0] < 0.3
    assert verdict(report, "length")["verdict"] == "pass"
    assert report["length"]["length_ratio"]["value"]["median"] in (1 / 3, 3.0, (1 / 3 + 3) / 2)


def test_words_are_the_unit_when_the_engine_gave_no_token_counts(tmp_path):
    rows = [
        scored_row(p, s, text(p, 12 if s == "pos" else 4), 1.0 if s == "pos" else 0.0, tokens=None)
        for p in range(10)
        for s in ("pos", "neg")
    ]
    _, _, report = audit(make_run(tmp_path / "run", rows))
    assert report["length"]["unit"]["value"] == "words" and report["length"]["length_ratio"]["value"]["median"] == 3.0


def test_flip_rates_on_known_refusals(tmp_path):
    """40 prompts: 20 where pos refuses and neg complies, 5 the reverse, 10 where both comply, 5 where both refuse."""
    refuse = "I'm sorry, but I cannot help with that request."
    comply = "Sure, here is how you do it step by step with care."
    plan = [(refuse, comply)] * 20 + [(comply, refuse)] * 5 + [(comply, comply)] * 10 + [(refuse, refuse)] * 5
    rows = []
    for p, (pos, neg) in enumerate(plan):
        rows.append(scored_row(p, "pos", f"{pos} ({p})", 1.0 if p % 4 else -2.0, tokens=12))
        rows.append(scored_row(p, "neg", f"{neg} [{p}]", 0.0, tokens=12))
    _, _, report = audit(make_run(tmp_path / "run", rows))
    flip = report["steering"]["flip"]["value"]["refusal"]
    assert flip["prompts"]["value"] == 40
    assert flip["forward"]["value"] == pytest.approx(20 / 40) and flip["reverse"]["value"] == pytest.approx(5 / 40)
    assert flip["net"]["value"] == pytest.approx(15 / 40)
    assert flip["forward"]["ci95"][0] < 0.5 < flip["forward"]["ci95"][1]
    per = report["steering"]["per_steering"]["value"]
    assert per["pos"]["refusal"]["mean"] == pytest.approx(25 / 40) and per["neg"]["refusal"]["mean"] == pytest.approx(10 / 40)
    assert verdict(report, "refusal-flip")["verdict"] == "pass"
    # the best is the neg response exactly where pos scored -2 (every 4th prompt): 10 of 40 lists
    assert report["steering"]["best_is_negative"]["value"] == pytest.approx(10 / 40)
    assert report["steering"]["lists_with_pos_and_neg"]["value"] == 40


def test_duplicates_ties_and_truncation(tmp_path):
    rows = []
    for p in range(30):
        pos = "The same canned answer for everyone." if p < 6 else text(p, 20)
        neg = text(p + 100, 20) if p >= 3 else pos.replace(" ", "  ")  # p < 3: the same text, spaced out → degenerate
        near = " ".join([*text(p + 100, 20).split()[:-1], "different"])  # the last word changed: Jaccard 17/19 with neg
        rows.append(scored_row(p, "pos", pos, 2.0, tokens=20, finish="length" if p % 10 == 0 else "stop"))
        rows.append(scored_row(p, "neg", neg, 0.0 if p % 5 else 2.0, tokens=20))
        rows.append(scored_row(p, "none", near if p >= 3 else text(p + 300, 20), 1.0, tokens=20))
    _, _, report = audit(make_run(tmp_path / "run", rows, pairs="all-pairs"))
    exact = report["duplicates"]["exact"]
    # p<3: pos and neg equal (within prompt: 6 candidates); the canned answer is pos of p<6 and neg of p<3 (across: 9)
    assert exact["within_prompt"]["value"] == pytest.approx(6 / 90)
    assert exact["across_prompts"]["value"] == pytest.approx(9 / 90) and exact["any"]["value"] == pytest.approx(9 / 90)
    assert verdict(report, "duplicates")["verdict"] == "fail"  # 0.1 > 0.05
    near = report["duplicates"]["near"]
    assert near["within_prompt"]["value"] == pytest.approx(54 / 90)  # p ≥ 3: neg and none differ by one word of 20
    ties = report["ties_and_truncation"]
    assert ties["truncated_candidates"]["value"] == pytest.approx(3 / 90)
    assert ties["truncated_by_steering"]["value"]["pos"] == pytest.approx(3 / 30)
    assert ties["dropped_by_reason"]["value"]["degenerate"] == 3
    assert ties["tie_dropped_pairs"]["value"] > 0  # p % 5 == 0: pos and neg both scored 2.0


def test_an_unranked_run_is_one_line_exit_2(tmp_path):
    ShardedTable(tmp_path / "run" / "scored", SCORED).append([scored_row(0, "pos", "hi", 1.0, tokens=1)])
    result = CliRunner().invoke(cli, ["audit", str(tmp_path / "run")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "lists.parquet" in result.output and "not ranked yet" in result.output
    assert not (tmp_path / "run" / "audit").exists()


def test_balance_length_brings_the_length_auc_down(tmp_path):
    """80 prompts where the chosen (pos) is 1.2–3.5× longer, 20 where it is 1.5× shorter: length AUC 0.8 before;
    rank --balance-length 3 drops the pairs beyond 3× and the surplus of chosen-longer pairs → AUC 0.5."""
    rows = []
    for p in range(100):
        pos_tokens, neg_tokens = (int(20 * (1.2 + (p % 10) * 0.25)), 20) if p < 80 else (20, 30)
        rows.append(scored_row(p, "pos", text(p, pos_tokens), 1.0 + p / 1000, tokens=pos_tokens))
        rows.append(scored_row(p, "neg", text(p + 999, neg_tokens), 0.0, tokens=neg_tokens))
    before = make_run(tmp_path / "before", rows)
    _, _, report = audit(before)
    assert report["length"]["length_auc"]["value"] == pytest.approx(0.8) and verdict(report, "length")["verdict"] == "fail"
    result = CliRunner().invoke(cli, ["rank", str(before), "--balance-length", "3"])
    assert result.exit_code == 0, result.output
    assert "length AUC 0.500" in result.output
    _, _, balanced = audit(before)
    assert balanced["length"]["length_auc"]["value"] == 0.5
    # 40 pairs: the interval around 0.5 is wider than the 0.35–0.65 band, so the verdict cannot pass yet
    low, high = balanced["length"]["length_auc"]["ci95"]
    assert low < 0.35 or high > 0.65
    assert verdict(balanced, "length")["verdict"] == "not sure" and verdict(balanced, "length")["prompts_to_decide"] > 40
    assert balanced["length"]["pairs"]["value"] == 40  # 20 chosen-shorter + the 20 chosen-longer with the widest score gap
    dropped = balanced["ties_and_truncation"]["dropped_by_reason"]["value"]
    assert dropped == {"length-band": 8 * 2, "length-balance": 80 - 16 - 20}  # ratios 3.2×, 3.5× (p % 10 ∈ {8, 9}) are outside
    pairs = pq.read_table(before / "ranked" / "pairs.parquet").to_pylist()
    kept_longer = sorted(int(p["prompt_id"][1:]) for p in pairs if int(p["prompt_id"][1:]) < 80)
    assert len(kept_longer) == 20 and min(kept_longer) >= 50  # the highest scores (1 + p/1000) have the widest gaps


def test_lists_without_pairs_give_not_measured_verdicts_not_passes(tmp_path):
    rows = [scored_row(p, "pos", text(p, 10), 1.0, tokens=10) for p in range(5)]  # one candidate per prompt: no pair
    code, output, report = audit(make_run(tmp_path / "run", rows))
    assert code == 0 and report["counts"]["pairs"]["value"] == 0
    for check in ("length", "bag-of-words", "best-negative", "refusal-flip", "truncated", "ties"):
        assert verdict(report, check)["verdict"] == "n/a", check
    assert verdict(report, "duplicates")["verdict"] == "pass"
    assert "length: N/A — length AUC not measured (pass when within [0.35, 0.65]" in output


# ------------------------------------------------------------------ issue 28: the shortcuts real data carries
def sentence(rng: random.Random, words: int) -> str:
    """Plain English-like filler: common words in random order, ending with a full stop."""
    common = (
        "the a of to and in is it that for you with on as this be are can your have from or by one will not but "
        "what all when there use so if about which more some time make like these them than then first water way "
        "people may down side been now find any new work part take get place made live where after back little "
        "only round year came show every good give under name very through just form great think say help low"
    ).split()
    return " ".join(rng.choice(common) for _ in range(words)) + "."


def pair_rows(prompts: int, seed: int, chosen: object, rejected: object) -> list[dict]:
    """One positive (the chosen: score 1) and one negative (score 0) answer per prompt, from `chosen(rng, p)` and
    `rejected(rng, p)`; token counts are the answers' words."""
    rng = random.Random(seed)
    rows = []
    for p in range(prompts):
        for steering, make, score in (("pos", chosen, 1.0), ("neg", rejected, 0.0)):
            answer = make(rng, p)  # type: ignore[operator]
            rows.append(scored_row(p, steering, answer, score, tokens=len(answer.split())))
    return rows


def mixed(rng: random.Random, words: int) -> str:
    """A long answer: runs of common words with rarer ones between them (as a topic's own words are)."""
    return " ".join(sentence(rng, 8)[:-1] + " " + text(rng.randrange(10**9), 4) for _ in range(words // 12)) + "."


def test_a_short_opening_word_on_every_chosen_answer_fails_the_word_check_and_is_shown(tmp_path):
    """Every chosen answer opens with "Sure!", no rejected one does, 120–240 words each, 60 pairs: one separating word
    among a hundred-odd. TF-IDF diluted it (AUC 0.71, a pass); word presence sees it. The report names the n-gram with
    its counts and shows three pairs that carry it."""
    rows = pair_rows(
        60,
        0,
        lambda rng, p: "Sure! " + mixed(rng, rng.randint(120, 240)),
        lambda rng, p: mixed(rng, rng.randint(120, 240)),
    )
    code, output, report = audit(make_run(tmp_path / "run", rows))
    check = verdict(report, "bag-of-words")
    assert code == 0 and check["verdict"] == "fail", check["line"]
    top = report["separability"]["separating_ngrams"]["value"][0]
    assert top == {"ngram": "sure", "chosen_only": 60, "rejected_only": 0}
    assert len(check["examples"]) == 3 and all(e["chosen"].startswith("Sure! ") for e in check["examples"])
    markdown = (tmp_path / "run" / "audit" / "audit.md").read_text()
    assert "| `sure` | 60 | 0 |" in markdown and "('sure' in the chosen side only)" in markdown


def test_longer_chosen_answers_fail_the_length_check_not_the_word_check(tmp_path):
    """Same vocabulary on both sides, chosen answers 1.5× longer (log-normal lengths, so they overlap): it is length.
    The word check's verdict reads the length-matched AUC (≈ 0.5); the raw AUC beside it is high."""

    def answer(rng: random.Random, factor: float) -> str:
        return sentence(rng, round(factor * rng.lognormvariate(math.log(40), 0.25)))

    rows = pair_rows(200, 0, lambda rng, p: answer(rng, 1.5), lambda rng, p: answer(rng, 1.0))
    _, _, report = audit(make_run(tmp_path / "run", rows))
    assert verdict(report, "length")["verdict"] == "fail"
    shown = verdict(report, "length")["examples"]  # the three pairs with the largest chosen / rejected ratio
    lengths = [re.fullmatch(r"chosen (\d+) tokens, rejected (\d+) tokens", e["note"]) for e in shown]
    assert len(shown) == 3 and all(m and int(m[1]) > 2 * int(m[2]) for m in lengths), [e["note"] for e in shown]
    assert verdict(report, "bag-of-words")["verdict"] == "pass", verdict(report, "bag-of-words")["line"]
    assert report["separability"]["bag_of_words_auc"]["value"] < 0.6
    assert report["separability"]["bag_of_words_auc_raw"]["value"] > 0.85


def test_a_slightly_longer_chosen_side_is_not_sure_with_the_prompts_that_would_decide_it(tmp_path):
    """Chosen 20% longer on average (lengths log-normal, as answers are): the length AUC's point is under 0.65 and its
    interval excludes 0.5 but reaches past 0.65 — not a pass; the line says about how many prompts would decide it."""
    rows = pair_rows(
        120,
        0,
        lambda rng, p: sentence(rng, round(1.2 * rng.lognormvariate(math.log(30), 0.5))),
        lambda rng, p: sentence(rng, round(rng.lognormvariate(math.log(30), 0.5))),
    )
    code, output, report = audit(make_run(tmp_path / "run", rows))
    auc = report["length"]["length_auc"]
    assert 0.5 < auc["value"] < 0.65 and auc["ci95"][0] > 0.5 and auc["ci95"][1] > 0.65
    check = verdict(report, "length")
    assert check["verdict"] == "not sure" and check["prompts_to_decide"] > 120
    assert f"length: NOT SURE — length AUC {auc['value']:.3f} [95% CI " in output
    assert f"about {check['prompts_to_decide']} prompts would decide it" in output


@pytest.mark.parametrize("seed", range(5))
def test_a_clean_run_with_a_steering_blind_scorer_raises_no_false_alarm(tmp_path, seed):
    """The control: 2 positive + 2 negative answers per prompt, all from one distribution, scores at random
    (a scorer blind to the steering). No shortcut check FAILs (the refusal flip does: there is no steering effect)."""
    rng = random.Random(seed)
    rows = []
    for p in range(150):
        for index, steering in enumerate(("pos", "pos", "neg", "neg")):
            answer = sentence(rng, rng.randint(20, 40))
            row = scored_row(p, steering, answer, rng.random(), tokens=len(answer.split()))
            row.update(key=f"p{p:04d}-{steering}-{index}", sample_index=index)
            rows.append(row)
    _, _, report = audit(make_run(tmp_path / "run", rows, pairs="pos-vs-neg"))
    for check in ("length", "bag-of-words", "best-negative", "duplicates", "near-duplicates", "truncated", "ties"):
        assert verdict(report, check)["verdict"] != "fail", verdict(report, check)["line"]
    assert report["steering"]["best_is_negative_by_chance"]["value"] == 0.5


def test_near_duplicates_ignore_punctuation_and_case(tmp_path):
    """A 67-word answer given again under another prompt with three punctuation edits and a capital: word 3-gram
    Jaccard 0.76 on the raw words, 1.0 once punctuation and case are set aside."""
    rng = random.Random(3)
    base = sentence(rng, 67)[:-1].split()
    edited = list(base)
    for at in (10, 30, 50):
        edited[at] += ","
    edited[0] = edited[0].capitalize()
    rows = []
    for p in range(40):
        answer = " ".join(base if p == 0 else edited) + "." if p < 2 else sentence(rng, 30)
        rows.append(scored_row(p, "pos", answer, 1.0, tokens=30))
        rows.append(scored_row(p, "neg", sentence(rng, 30), 0.0, tokens=30))
    _, _, report = audit(make_run(tmp_path / "run", rows), "--near-duplicate-max", "0.01")
    assert report["duplicates"]["exact"]["any"]["value"] == 0.0  # not the same text
    assert report["duplicates"]["near"]["across_prompts"]["value"] == pytest.approx(2 / 80)
    check = verdict(report, "near-duplicates")
    assert check["verdict"] == "fail" and check["examples"][0]["prompt_id"] == "p0000 / p0001"
    assert check["examples"][0]["note"] == "Jaccard 1.00"


def test_the_refusal_flip_reads_modern_refusal_wording(tmp_path):
    """The positive prompt's answers refuse as today's models do — "I can't help with that.", a curly apostrophe —
    and the negative ones comply (one mentions "illegal"): the flip is seen, by the measure the report names."""
    refusals = ["I can't help with that.", "I\u2019m sorry, but I can\u2019t assist with that.", "I won't help with that."]
    compliance = ["Sure: first, gather the parts.", "Here is a plan; note that some of it is illegal in places."]
    rows = pair_rows(
        60,
        4,
        lambda rng, p: f"{refusals[p % 3]} ({p})",
        lambda rng, p: f"{compliance[p % 2]} [{p}]",
    )
    _, output, report = audit(make_run(tmp_path / "run", rows))
    assert verdict(report, "refusal-flip")["verdict"] == "pass", verdict(report, "refusal-flip")["line"]
    flip = report["steering"]["flip"]["value"]
    assert flip["refusal_opening"]["net"]["value"] == 1.0 and "refusal_opening" in flip["refusal_opening"]["forward"]["definition"]
    assert flip["refusal"]["net"]["value"] < 0.5  # HarmBench's prefix rule, beside it, misses most of them
    assert "refusal-flip: PASS — net refusal flip rate (refusal_opening) 1.000" in output
