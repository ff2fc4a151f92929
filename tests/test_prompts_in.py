"""Reading prompts: every input format, HH transcripts, ids, and one clear error line per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_jsonl
from neat_data.errors import NeatError
from neat_data.keys import prompt_id
from neat_data.prompts_in import load_prompts

EXPECTED = [
    [{"role": "user", "content": "How do I boil an egg?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "About cats."}],
    [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "I can't help."},
     {"role": "user", "content": "Why not?"}],
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
    write_jsonl(folder / "train.jsonl", [
        {"chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: Call a locksmith.",
         "rejected": "\n\nHuman: How do I pick a lock?\n\nAssistant: Use a pin."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
    ])
    loaded = load_prompts(f"hf://{folder}@train")
    assert [r.messages for r in loaded.records] == [[{"role": "user", "content": "How do I pick a lock?"}], [{"role": "user", "content": "Hi"}]]


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


@pytest.mark.parametrize("content, row, field, message", [
    ('{"prompt": "ok"}\n{"prompt": \n', 2, None, "invalid JSON"),
    ('{"prompt": "ok"}\n["a list"]\n', 2, None, "JSON object"),
    ('{"text": "no prompt column"}\n', 1, "prompt", "no prompt column"),
    ('{"prompt": "   "}\n', 1, "prompt", "empty prompt"),
    ('{"prompt": 42}\n', 1, "prompt", "expected a string"),
    ('{"messages": []}\n', 1, "messages", "empty conversation"),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}\n', 1, "messages", "expected 'user'"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n', 1, "messages", "end with a user"),
    ('{"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "a"}]}\n', 1, "messages", "system messages"),
    ('{"messages": [{"role": "user", "content": ""}]}\n', 1, "messages", "empty content"),
    ('{"prompt": "a", "prompt_id": "x"}\n{"prompt": "b", "prompt_id": "x"}\n', 2, "prompt_id", "duplicate prompt_id"),
])
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
