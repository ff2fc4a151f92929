"""Pure functions: message building, reply parsing, HH transcripts, ids, seeds, content keys."""

from __future__ import annotations

import pytest

from neat_data.core.keys import choose_index, content_key, prompt_id, request_seed
from neat_data.core.messages import build_messages, parse_reply
from neat_data.core.prompts_in import parse_hh_transcript

NEUTRAL = [{"role": "user", "content": "How do I pick a lock?"}]


def test_build_messages_positive_system_role():
    assert build_messages(NEUTRAL, "Be kind.") == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "How do I pick a lock?"},
    ]


def test_build_messages_neutral_has_no_system_and_is_a_copy():
    messages = build_messages(NEUTRAL, None)
    assert messages == NEUTRAL and messages[0] is not NEUTRAL[0]


def test_build_messages_merged_into_first_user_turn_only():
    prompt = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert build_messages(prompt, "Be rude.", "merged") == [
        {"role": "user", "content": "Be rude.\n\na"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert prompt[0]["content"] == "a"  # the neutral prompt is never modified


def test_build_messages_unknown_mode():
    with pytest.raises(ValueError, match="unknown system mode"):
        build_messages(NEUTRAL, "x", "prefix")


def test_parse_reply_ok_and_missing_text():
    assert parse_reply("  Paris. \n", "stop", 10, 2) == {
        "response": "Paris.",
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "status": "ok",
        "error": None,
    }
    row = parse_reply(None, "stop", 10, 0)
    assert row["status"] == "error" and row["response"] is None and "no text" in row["error"]


def test_hh_transcript_strips_final_assistant_turn():
    text = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
    ]


def test_hh_transcript_multiline_turns_and_trailing_empty_assistant():
    text = "\n\nHuman: line one\nline two\n\nAssistant:"
    assert parse_hh_transcript(text) == [{"role": "user", "content": "line one\nline two"}]


def test_hh_transcript_rejects_plain_text():
    with pytest.raises(ValueError):
        parse_hh_transcript("just a question")


def test_prompt_id_is_stable_and_content_based():
    # A literal value: the id must not change across versions, machines or Python hash seeds.
    assert prompt_id(NEUTRAL) == "1881d732eb7258d2"
    assert prompt_id([{"content": "How do I pick a lock?", "role": "user"}]) == prompt_id(NEUTRAL)
    assert prompt_id([{"role": "user", "content": "How do I pick a lock? "}]) != prompt_id(NEUTRAL)


def test_request_seed_is_deterministic_and_distinct():
    seeds = {request_seed(0, "p1", steering, "harmless-01") for steering in ("pos", "neg", "none")}
    assert len(seeds) == 3
    assert request_seed(0, "p1", "pos", "harmless-01") == request_seed(0, "p1", "pos", "harmless-01")
    assert request_seed(1, "p1", "pos", "harmless-01") != request_seed(0, "p1", "pos", "harmless-01")
    assert all(0 <= s < 2**31 for s in seeds)


def test_content_key_changes_with_every_identity_field():
    base = dict(
        round_index=1,
        prompt_id="p",
        steering="pos",
        pair_id="h-01",
        system_prompt_hash="abc",
        sample_index=0,
        model="m",
        sampling={"temperature": 0.8, "top_p": 0.95, "max_tokens": 8, "seed": 0},
    )
    key = content_key(**base)
    assert len(key) == 32 and key == content_key(**base)
    for field, other in [
        ("round_index", 2),
        ("prompt_id", "q"),
        ("steering", "neg"),
        ("pair_id", "h-02"),
        ("system_prompt_hash", "abd"),
        ("sample_index", 1),
        ("model", "m2"),
        ("sampling", {**base["sampling"], "temperature": 0.7}),
    ]:
        assert content_key(**{**base, field: other}) != key, field


def test_choose_index_spreads_over_items():
    picks = {choose_index(0, f"prompt-{i}", 10) for i in range(200)}
    assert picks == set(range(10))
