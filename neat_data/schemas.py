"""Table schemas, declared once. Every stage validates its input against these at the boundary.

`GENERATIONS` is neat_data's long table: one row per response (see ../shared/FORMATS.md). The prompt is
the *neutral* conversation (no steering text); the system prompt that steered the response is its own
column, with the pair id and a content hash so a row can always be traced back to its prompt library.
"""

from __future__ import annotations

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

STEERINGS = ("pos", "neg", "none")
STATUSES = ("ok", "error")

GENERATIONS = pa.schema(
    [
        ("key", pa.string()),  # content key: what makes this row unique (see neat_data.keys)
        ("round", pa.int32()),
        ("prompt_id", pa.string()),
        ("prompt", MESSAGES),  # neutral conversation, ends with a user turn
        ("steering", pa.string()),  # pos | neg | none
        ("pair_library", pa.string()),  # library the pair came from (null for steering=none)
        ("system_prompt_id", pa.string()),  # pair id, e.g. harmless-03 (null for steering=none)
        ("system_prompt_hash", pa.string()),  # sha256 of the system prompt text, first 16 hex digits
        ("system_prompt", pa.string()),  # the steering text actually used (null for steering=none)
        ("system_mode", pa.string()),  # system | merged (into the first user turn) | none
        ("sample_index", pa.int32()),
        ("response", pa.string()),  # null for error rows
        ("finish_reason", pa.string()),
        ("model", pa.string()),
        ("backend", pa.string()),
        ("sampling", pa.string()),  # JSON of the sampling config (temperature, top_p, max_tokens, seed)
        ("seed", pa.int64()),  # per-request seed derived from (seed, prompt_id, steering, pair)
        ("n_fallback", pa.bool_()),  # server ignored n: samples came from separate requests
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("status", pa.string()),  # ok | error
        ("error", pa.string()),  # reason, for error rows
    ]
)


def check_columns(table: pa.Table, schema: pa.Schema, source: str) -> None:
    """Raise NeatError naming the file and field if `table` lacks a column of `schema` or types differ."""
    from neat_data.errors import NeatError

    for field in schema:
        if field.name not in table.column_names:
            raise NeatError("missing column", file=source, field=field.name)
        actual = table.schema.field(field.name).type
        if actual != field.type:
            raise NeatError(f"has type {actual}, expected {field.type}", file=source, field=field.name)
