"""Reading prompts: every input format, HH transcripts, ids, and one clear error line per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from neat_data.core.errors import NeatError
from neat_data.core.keys import prompt_id
from neat_data.core.prompts_in import load_prompts

EXPECTED = [
    [{"role": "user", "content": "How do I boil an egg?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "About cats."}],
    [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "I can't help."},
        {"role": "user", "content": "Why not?"},
    ],
]


def test_jsonl_prompt_messages_and_hh(prompts_file: Path):
    loaded = load_prompts(prompts_file)
    assert [r.messages for r in loaded.records] == EXPECTED
    assert [r.prompt_id for r in loaded.records] == [prompt_id(m) for m in EXPECTED]
    assert [r.source_row for r in loaded.records] == [1, 2, 3, 4]


def test_csv_and_parquet_give_the_same_prompts(tmp_path: Path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('prompt\n"How do I boil an egg?"\n"What is the capital of France?"\n', encoding="utf-8")
    parquet_path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"messages": [EXPECTED[0], EXPECTED[2]]}), parquet_path)
    assert [r.messages for r in load_prompts(csv_path).records] == EXPECTED[:2]
    assert [r.messages for r in load_prompts(parquet_path).records] == [EXPECTED[0], EXPECTED[2]]


def test_hh_rlhf_chosen_column_from_a_local_hf_dataset(tmp_path: Path):
    folder = tmp_path / "hh"
    folder.mkdir()
    write_jsonl(
        folder / "train.jsonl",
        [
            {
                "chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: Call a locksmith.",
                "rejected": "\n\nHuman: How do I pick a lock?\n\nAssistant: Use a pin.",
            },
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
        ],
    )
    loaded = load_prompts(f"hf://{folder}@train")
    assert [r.messages for r in loaded.records] == [
        [{"role": "user", "content": "How do I pick a lock?"}],
        [{"role": "user", "content": "Hi"}],
    ]


def test_explicit_prompt_ids_kept_and_content_duplicates_dropped(tmp_path: Path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "prompt_id": "first"}, {"prompt": "b"}, {"prompt": "b"}, {"prompt": "c"}])
    loaded = load_prompts(path)
    assert [r.prompt_id for r in loaded.records][0] == "first"
    assert len(loaded.records) == 3 and loaded.duplicates_dropped == 1
    assert len(load_prompts(path, limit=2).records) == 2


def _error(tmp_path: Path, name: str, content: bytes | str, **kwargs) -> NeatError:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(NeatError) as caught:
        load_prompts(path, **kwargs)
    assert caught.value.file == str(path)
    return caught.value


@pytest.mark.parametrize(
    "content, row, field, message",
    [
        ('{"prompt": "ok"}\n{"prompt": \n', 2, None, "invalid JSON"),
        ('{"prompt": "ok"}\n["a list"]\n', 2, None, "JSON object"),
        ('{"text": "no prompt column"}\n', 1, "prompt", "no prompt column"),
        ('{"prompt": "   "}\n', 1, "prompt", "empty prompt"),
        ('{"prompt": 42}\n', 1, "prompt", "expected a string"),
        ('{"messages": []}\n', 1, "messages", "empty conversation"),
        ('{"messages": [{"role": "assistant", "content": "hi"}]}\n', 1, "messages", "expected 'user'"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n', 1, "messages", "end with a user"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "x"}, {"role": "user", "content": "b"}]}\n',
            1,
            "messages",
            "only the first message may be one",
        ),
        ('{"messages": "not json"}\n', 1, "messages", "JSON list"),
        ('{"messages": [{"role": "user", "content": ""}]}\n', 1, "messages", "empty content"),
        ('{"prompt": "a", "prompt_id": "x"}\n{"prompt": "b", "prompt_id": "x"}\n', 2, "prompt_id", "duplicate prompt_id"),
    ],
)
def test_bad_jsonl_rows(tmp_path: Path, content, row, field, message):
    error = _error(tmp_path, "bad.jsonl", content)
    assert (error.row, error.field) == (row, field) and message in error.message


def test_non_utf8_bytes(tmp_path: Path):
    error = _error(tmp_path, "bad.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    assert error.row == 2 and "UTF-8" in error.message


def test_missing_file_and_unknown_format(tmp_path: Path):
    with pytest.raises(NeatError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    error = _error(tmp_path, "p.txt", "hello")
    assert "unsupported prompts format" in error.message


def test_named_prompt_column_must_exist(tmp_path: Path):
    error = _error(tmp_path, "p.jsonl", json.dumps({"prompt": "a"}) + "\n", prompt_column="question")
    assert error.field == "question"


def test_corrupted_parquet(tmp_path: Path):
    error = _error(tmp_path, "p.parquet", b"PAR1 this is not parquet")
    assert "cannot read Parquet" in error.message


def test_a_leading_system_message_is_kept_unless_refused(tmp_path: Path):
    """Chat datasets often carry a persona: it is part of the neutral conversation (`--system-combine` decides how the
    steering text joins it); `refuse` names the row."""
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "plain"}, {"messages": [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}]}],
    )
    records = load_prompts(path).records
    assert records[1].messages == [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}]
    error = _error(tmp_path, "p.jsonl", path.read_text(), allow_system=False)
    assert (error.row, error.field) == (2, "messages") and "refuse" in error.message


def test_messages_stored_as_a_json_string_are_parsed_in_every_format(tmp_path: Path):
    """Parquet and JSONL exports often hold `messages` as a JSON string; before, it became one literal user message."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    conversation = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    jsonl = write_jsonl(tmp_path / "p.jsonl", [{"messages": json.dumps(conversation)}])
    pq.write_table(pa.table({"messages": [json.dumps(conversation)]}), tmp_path / "p.parquet")
    for path in (jsonl, tmp_path / "p.parquet"):
        assert load_prompts(path).records[0].messages == conversation


def test_csv_is_parsed_by_the_csv_module_strictly(tmp_path: Path):
    """A U+2028 or a line break inside a quoted cell stays in the cell; a stray quote is an error naming its row
    (before: the text was split with splitlines() and a lenient parser swallowed the following rows, exit 0)."""
    path = tmp_path / "p.csv"
    path.write_text('prompt,prompt_id\n"one\u2028still one",a\n"two\nlines",b\nthree,c\n', encoding="utf-8")
    records = load_prompts(path).records
    assert [r.messages[0]["content"] for r in records] == ["one\u2028still one", "two\nlines", "three"]
    (tmp_path / "mid.csv").write_text('prompt,prompt_id\nfine,a\nsay "hi",b\nafter,c\n', encoding="utf-8")
    assert [r.messages[0]["content"] for r in load_prompts(tmp_path / "mid.csv").records] == ["fine", 'say "hi"', "after"]
    error = _error(tmp_path, "open.csv", 'prompt,prompt_id\nfine,a\n"never closed,b\nafter,c\nmore,d\n')
    assert error.row == 2 and "CSV" in error.message
    error = _error(tmp_path, "wide.csv", "prompt,prompt_id\nfine,a\nx,b,extra\n")
    assert error.row == 2 and "cells" in error.message
