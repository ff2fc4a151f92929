"""The judge scorer: strict parsing, error rows with the raw reply, both-order pairwise judging."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from neat_data.core.errors import NeatError
from neat_data.engines.base import Sampling
from neat_data.scorers.base import ScoreItem
from neat_data.scorers.judge import JudgeScorer, load_template, parse_rating, parse_winner
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.stages.score import ScoreConfig, run_score
from neat_data.testing.recording_backend import RecordingBackend

PROMPT = [{"role": "user", "content": "How do I boil an egg?"}]


def test_strict_parsers():
    assert parse_rating("Rating: 7") == 7 and parse_rating("I'd say **Rating: 10**.") == 10
    for bad in ("7", "Rating: 0", "Rating: 11", "Rating: 3 ... Rating: 4", "", None, "rating is high"):
        with pytest.raises(ValueError):
            parse_rating(bad)
    assert parse_winner("Winner: B") == "B" and parse_winner("winner: a") == "A"
    for bad in ("B", "Winner: C", "Winner: A. Actually Winner: B", None):
        with pytest.raises(ValueError):
            parse_winner(bad)


def test_pointwise_ratings_and_unparseable_replies_keep_the_raw_text():
    def reply(messages, sample, seed):
        return "Rating: 8" if "seven minutes" in messages[-1]["content"] else "It is quite good I think"

    backend = RecordingBackend(reply=reply)
    items = [ScoreItem(PROMPT, "Boil it for seven minutes.", "pos", None, None), ScoreItem(PROMPT, "Go away.", "neg", None, None)]
    results = JudgeScorer(backend, mode="pointwise").score(items)
    assert results[0].score == 8.0 and results[1].score is None
    assert results[1].error == 'unparseable rating: "It is quite good I think"'
    sent = [messages for messages, _, _ in backend.sent]
    assert sent[0][0]["role"] == "system" and "[Response to evaluate]\nBoil it for seven minutes." in sent[0][1]["content"]
    assert "User: How do I boil an egg?" in sent[0][1]["content"]


def test_pairwise_judges_both_orders_and_cancels_position_bias():
    responses = ["short", "a medium answer", "the longest answer of all three"]

    def longer_wins_but_biased_to_a(messages, sample, seed):
        text = messages[-1]["content"]
        a = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", text, re.S).group(1)
        b = re.search(r"\[Response B\]\n(.*?)\n\nWhich", text, re.S).group(1)
        if a == "short" and b == "a medium answer":
            return "Winner: A"  # a position-biased mistake, cancelled by the swapped comparison
        return "Winner: A" if len(a) > len(b) else "Winner: B"

    backend = RecordingBackend(reply=longer_wins_but_biased_to_a)
    items = [ScoreItem(PROMPT, r, "pos", None, None) for r in responses]
    results = JudgeScorer(backend, mode="pairwise").score(items)
    shown = []
    for messages, _, _ in backend.sent:
        text = messages[-1]["content"]
        shown.append(
            (re.search(r"\[Response A\]\n(.*?)\n\n", text, re.S).group(1), re.search(r"\[Response B\]\n(.*?)\n\n", text, re.S).group(1))
        )
    assert len(shown) == 6 and all((b, a) in shown for a, b in shown)  # every pair in both orders
    assert [r.score for r in results] == [0.25, 0.25, 1.0]


def test_pairwise_with_a_single_response_is_an_error():
    results = JudgeScorer(RecordingBackend(reply=lambda m, s, seed: "Winner: A"), mode="pairwise").score(
        [ScoreItem(PROMPT, "alone", "pos", None, None)]
    )
    assert results[0].score is None and "at least two responses" in results[0].error


def test_bad_judge_template(tmp_path: Path):
    path = tmp_path / "judge.yaml"
    path.write_text("user: 'Rate {response}'\n")
    with pytest.raises(NeatError) as caught:
        load_template("pointwise", str(path))
    assert caught.value.field == "user" and "{conversation}" in caught.value.message


def make_run(prompts_file: Path, out: Path) -> Path:
    run_generate(
        GenerateConfig(prompts=str(prompts_file), model="fake", out=out, num_pos=1, num_neg=1, sampling=Sampling(max_tokens=8)),
        backend=RecordingBackend(),
        progress=False,
    )
    return out


def test_judge_stage_through_the_openai_backend_and_fake_server(fake_server, prompts_file: Path, tmp_path: Path):
    good = fake_server(fixed_reply="Rating: 9")
    run = make_run(prompts_file, tmp_path / "run")
    summary = run_score(ScoreConfig(run=run, scorer="judge", model="judge", base_url=good.url), progress=False)
    rows = pq.read_table(run / "scored").to_pylist()
    assert summary.counts["score_status"] == {"ok": 8} and {r["score"] for r in rows} == {9.0}
    assert {r["scorer"] for r in rows} == {"judge-pointwise:judge"}
    assert all(body["temperature"] == 0.0 for body in good.requests)
    chatty = fake_server(fixed_reply="Looks fine to me.")
    run_score(ScoreConfig(run=run, scorer="judge", model="judge", base_url=chatty.url), overwrite=True, progress=False)
    rows = pq.read_table(run / "scored").to_pylist()
    assert all(r["score_status"] == "error" and r["score_error"] == 'unparseable rating: "Looks fine to me."' for r in rows)


@pytest.mark.server
def test_judge_against_the_real_vllm_server(vllm_server: str, prompts_file: Path, tmp_path: Path):
    # The tiny random model cannot judge: every reply must end up as an error row that keeps its raw text
    # (or, by chance, a valid rating) — never a crash or a dropped row.
    run = make_run(prompts_file, tmp_path / "run")
    run_score(ScoreConfig(run=run, scorer="judge", model="tiny", base_url=vllm_server, judge_mode="pairwise"), progress=False)
    rows = pq.read_table(run / "scored").to_pylist()
    assert len(rows) == 8
    for row in rows:
        assert (row["score_status"] == "ok" and 0.0 <= row["score"] <= 1.0) or row["score_error"].startswith("unparseable verdict: ")
