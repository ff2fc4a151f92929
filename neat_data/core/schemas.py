"""Table schemas, declared once. Every stage validates its input against these at the boundary.

`GENERATIONS` is neat_data's long table: one row per response (see docs/FORMATS.md). The prompt is
the *neutral* conversation (no steering text); the system prompt that steered the response is its own
column, with the pair id and a content hash so a row can always be traced back to its prompt library.
"""

from __future__ import annotations

from typing import overload

import pyarrow as pa
import pyarrow.compute as pc

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

STEERINGS = ("pos", "neg", "none", "dataset")  # dataset: a response that came with the user's prompts file

GENERATIONS = pa.schema(
    [
        ("key", pa.string()),  # content key: what makes this row unique (see neat_data.core.keys)
        ("round", pa.int32()),
        ("prompt_id", pa.string()),
        ("prompt", MESSAGES),  # neutral conversation, ends with a user turn
        ("steering", pa.string()),  # pos | neg | none | dataset
        ("pair_library", pa.string()),  # library the pair came from (null for steering=none)
        ("system_prompt_id", pa.string()),  # pair id, e.g. harmless-03 (null for steering=none)
        ("system_prompt_hash", pa.string()),  # sha256 of the system prompt text, first 16 hex digits
        ("system_prompt", pa.string()),  # the steering text actually used (null for steering=none)
        ("system_mode", pa.string()),  # system | merged (into the first user turn) | none
        ("system_combine", pa.string()),  # prepend | append: how the steering text joined the prompt's own system message
        ("sample_index", pa.int32()),
        ("response", pa.string()),  # null for error rows
        ("finish_reason", pa.string()),
        ("model", pa.string()),
        ("backend", pa.string()),
        ("sampling", pa.string()),  # JSON of the sampling config (temperature, top_p, max_tokens, seed) that produced this row
        ("settings_hash", pa.string()),  # sha256 (16 hex) of model, backend, sampling, system mode/combine: which pass made it
        ("seed", pa.int64()),  # per-request seed derived from (seed, prompt_id, steering, pair)
        ("n_fallback", pa.bool_()),  # server ignored n: samples came from separate requests
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("status", pa.string()),  # ok | error
        ("error", pa.string()),  # reason, for error rows
        # A dataset response's place in the source (null on generated rows; docs/FORMATS.md "Preference layouts"):
        ("source_label", pa.string()),  # chosen | rejected | response_0 | response_1 | ranked
        ("source_rank", pa.int32()),  # 0 = the dataset's preferred answer for the prompt, 1 = next…; null = no preference
        ("source_score", pa.float64()),  # UltraFeedback score_chosen/score_rejected, a ranked list's score
        ("source_safe", pa.bool_()),  # PKU-SafeRLHF is_response_X_safe
    ]
)


# Columns added after the first release: a shard written before lacks them and reads as nulls (not "corrupted").
ADDED_COLUMNS = frozenset(
    {
        "system_combine",
        "finish_reason_chosen",
        "finish_reason_rejected",
        "settings_hash",
        "source_label",
        "source_rank",
        "source_score",
        "source_safe",
        "strategy",
        "source_label_chosen",
        "source_label_rejected",
    }
)


def one_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """`column` as one Array: its only chunk as it is, else the chunks joined. (`ChunkedArray.combine_chunks` copies
    even a single chunk: at 1M rows that was a second copy of every response rank gathered.)"""
    if isinstance(column, pa.Array):
        return column
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def check_columns(table: pa.Table, schema: pa.Schema, source: str) -> None:
    """Raise NeatError naming the file and field if `table` lacks a column of `schema` or types differ."""
    from neat_data.core.errors import NeatError

    for field in schema:
        if field.name not in table.column_names:
            if field.name in ADDED_COLUMNS or (schema is RANKED_LISTS and field.name == "finish_reason"):
                continue  # written before the column existed: readers treat it as nulls
            raise NeatError("missing column", file=source, field=field.name)
        actual = table.schema.field(field.name).type
        if actual != field.type:
            raise NeatError(f"has type {actual}, expected {field.type}", file=source, field=field.name)


# The score stage adds these columns to every generations row (error rows pass through with nulls).
SCORE_FIELDS = [
    ("score", pa.float64()),  # what ranking uses (equals raw_score unless negative_score = floor)
    ("raw_score", pa.float64()),  # the scorer's own value
    ("scorer", pa.string()),  # e.g. self-contrast:<model>, reward-model:<model>, python:mod:fn
    ("negative_score", pa.string()),  # scored | floor
    ("score_status", pa.string()),  # ok | error | skipped (generation error rows)
    ("score_error", pa.string()),
]
SCORED = pa.schema(list(GENERATIONS) + [pa.field(name, type_) for name, type_ in SCORE_FIELDS])

# One ranked list per prompt: candidates sorted by score, best first (RRHF/PRO-style input). Every list
# column is aligned with `responses`; `finish_reason` is each candidate's ("stop", "length", …): the trainer
# appends the end-of-turn token only to finished ones.
RANKED_LISTS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", MESSAGES),
        ("responses", pa.list_(pa.string())),
        ("finish_reason", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float64())),
        ("steering", pa.list_(pa.string())),
        ("keys", pa.list_(pa.string())),
        ("source_label", pa.list_(pa.string())),  # each candidate's source_label (null: generated)
        ("source_rank", pa.list_(pa.int32())),  # each candidate's source_rank (null: generated, or no preference)
    ]
)

# Preference pairs chosen from the ranked lists by a pair strategy.
PAIRS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", MESSAGES),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()),
        ("steering_chosen", pa.string()),
        ("steering_rejected", pa.string()),
        ("key_chosen", pa.string()),
        ("key_rejected", pa.string()),
        ("finish_reason_chosen", pa.string()),
        ("finish_reason_rejected", pa.string()),
        ("strategy", pa.string()),  # the pair strategy that formed it (null: ranked before strategies were recorded)
        ("source_label_chosen", pa.string()),  # each side's source_label (null: a generated answer)
        ("source_label_rejected", pa.string()),
    ]
)

# The pairs the strategy formed and rank dropped, one row each, with the reason (neat_data.stages.rank.DropReason):
# degenerate (same text after whitespace normalisation), tie, margin (gap below min_margin), truncated
# (--drop-truncated: a side stopped at max_tokens). `key_*` are the generations keys of the two sides.
DROPPED_PAIRS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("key_chosen", pa.string()),
        ("key_rejected", pa.string()),
        ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()),
        ("reason", pa.string()),
        ("strategy", pa.string()),
    ]
)

TRUNCATED = "length"  # the finish reason of a response cut by max_tokens (or the context window)


@overload
def is_truncated(finish_reason: str | None) -> bool: ...
@overload
def is_truncated(finish_reason: pa.Array | pa.ChunkedArray) -> pa.Array: ...
def is_truncated(finish_reason: str | None | pa.Array | pa.ChunkedArray) -> bool | pa.Array:
    """Cut at max_tokens (finish_reason "length"); null (unknown) is not. One reason, or an Arrow column (→ no nulls)."""
    if finish_reason is None or isinstance(finish_reason, str):
        return finish_reason == TRUNCATED
    return pc.fill_null(pc.equal(finish_reason, TRUNCATED), False)
