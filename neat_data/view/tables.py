"""Column reads for the viewer: the response rows of one table folder, without loading texts it does not need.

In:  one folder holding `generations/` and/or `scored/` (a single-stage run, a round folder, an eval folder)
     and, when ranked, `ranked/lists.parquet`, `ranked/pairs.parquet`, `ranked/dropped.parquet`.
Out: `FolderRows`: one Arrow table of per-response index columns (no response text: its length instead),
     in the run's order (prompts as first written, then pos/neg/none, then sample index), plus the ranks,
     kept pairs and dropped pairs as positions into it; `read_texts` fetches texts for chosen prompts only.

Shards are read column by column (`pq.read_table(columns=…)`), per shard reduced to what the page needs,
then deduplicated by key like `ShardedTable.read` (a retried row supersedes its error row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.manifest import RankRecord, read_manifest
from neat_data.core.runfolder import ShardedTable, keep_last_per_key
from neat_data.core.schemas import ADDED_COLUMNS, SCORED, STEERINGS, one_array

TITLE_CHARS = 200  # the list shows the start of the last user turn
# Generation columns the index keeps (texts are read separately, for the prompts a page holds).
INDEX_COLUMNS = [
    "key",
    "round",
    "prompt_id",
    "steering",
    "pair_library",
    "system_prompt_id",
    "system_prompt",
    "sample_index",
    "finish_reason",
    "completion_tokens",
    "status",
    "error",
    "source_label",  # a dataset answer's label in the user's file (chosen, rejected, …), its rank there
    "source_rank",
]
SCORE_COLUMNS = ["key", "score", "raw_score", "score_status", "score_error"]


def read_columns(folder: Path, schema: pa.Schema, columns: list[str], reduce: Callable[[pa.Table], pa.Table] | None = None) -> pa.Table:
    """`columns` of every shard of a table folder (sub-folder shards too), each shard passed through
    `reduce`, then the last row per key. A shard that cannot be read, or lacks a column, is a NeatError."""
    parts = []
    for path in ShardedTable(folder, schema).shard_paths():
        try:
            names = set(pq.read_schema(path).names)
        except Exception as error:
            raise NeatError(f"unreadable shard ({error}); delete it to regenerate its rows", file=path) from None
        late = [name for name in columns if name not in names and name in ADDED_COLUMNS]  # written before it existed: nulls
        missing = [name for name in columns if name not in names and name not in late]
        if missing:
            raise NeatError("shard lacks a column (written by another version or stage?)", file=path, field=missing[0])
        try:
            table = pq.read_table(path, columns=[name for name in columns if name not in late])
        except Exception as error:
            raise NeatError(f"unreadable shard ({error}); delete it to regenerate its rows", file=path) from None
        for name in late:
            table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
        table = table.select(columns)
        table = table.cast(pa.schema([schema.field(name) for name in columns]))
        parts.append(reduce(table) if reduce else table)
    if not parts:
        return None
    return keep_last_per_key(pa.concat_tables(parts).combine_chunks())


def _conversation_facts(table: pa.Table) -> pa.Table:
    """Replace `prompt` and `response` by what the index needs: title, turns, text lengths."""
    prompt = table.column("prompt").combine_chunks()  # a fresh array: its offsets start at 0 (used raw below)
    flat = pc.list_flatten(prompt)
    offsets = prompt.offsets.to_numpy()
    turns = np.diff(offsets)
    contents = pc.fill_null(pc.struct_field(flat, "content"), "")
    roles = pc.struct_field(flat, "role").to_numpy(zero_copy_only=False)
    lengths = pc.utf8_length(contents).to_numpy(zero_copy_only=False).astype(np.int64)
    conv_chars = _segment_reduce(np.add, lengths, offsets, 0)
    # the last user turn names the prompt in the list
    user_positions = np.where(roles == "user", np.arange(len(roles)), -1)
    last_user = _segment_reduce(np.maximum, user_positions, offsets, -1)
    titles = (
        pc.utf8_slice_codeunits(contents.take(pa.array(np.maximum(last_user, 0))), 0, TITLE_CHARS)
        if len(flat)
        else pa.nulls(len(turns), pa.string())
    )
    titles = pc.if_else(pa.array(last_user >= 0), titles, pa.scalar("", pa.string()))
    response_chars = pc.fill_null(pc.utf8_length(table.column("response")), 0)
    return (
        table.drop_columns(["prompt", "response"])
        .append_column("title", titles)
        .append_column("turns", pa.array(turns, pa.int32()))
        .append_column("conv_chars", pa.array(conv_chars, pa.int64()))
        .append_column("chars", response_chars.cast(pa.int64()))
    )


def _segment_reduce(ufunc: np.ufunc, values: np.ndarray, offsets: np.ndarray, empty: int) -> np.ndarray:
    """`ufunc.reduce` over each list's slice values[offsets[i]:offsets[i+1]]; `empty` for empty lists."""
    counts = np.diff(offsets)
    out = np.full(len(counts), empty, np.int64)
    if len(counts):
        # a trailing `empty` (neutral for the reductions used here) keeps every start inside the array
        reduced = ufunc.reduceat(np.r_[values.astype(np.int64), empty], offsets[:-1])
        out[counts > 0] = reduced[counts > 0]
    return out


@dataclass
class FolderRows:
    """The responses of one folder, index columns only, in display order; positions refer to `rows`."""

    folder: Path
    rows: pa.Table  # INDEX_COLUMNS + title, turns, conv_chars, chars (no texts) + the score columns (null: not scored)
    prompt_of_row: np.ndarray  # prompt number (0-based within this folder) of each row
    prompt_first_row: np.ndarray  # first row of each prompt
    rank: np.ndarray  # 1-based position in the prompt's ranked list, 0 = not ranked
    kept: dict[str, np.ndarray]  # c, r: row positions (-1 unknown); m: margin; p: prompt number
    dropped: dict[str, np.ndarray] | None  # p, a, b, reason (strings): None when the folder has no dropped.parquet
    dropped_counts: dict[str, int]  # by reason (from dropped.parquet, else the manifest's rank summary)
    pairs_strategy: str | None


def source_folder(folder: Path) -> tuple[Path, pa.Schema] | None:
    """The table that lists every response: generations/ (authoritative), else scored/."""
    for table in (layout.GENERATIONS, layout.SCORED):
        if table.path(folder).is_dir() and table.rows(folder).shard_paths():
            return table.path(folder), table.rows(folder).schema
    return None


def read_folder(folder: Path) -> FolderRows | None:
    """Every response of `folder` (None when it holds no table yet)."""
    source = source_folder(folder)
    if source is None:
        return None
    table_folder, schema = source
    rows = read_columns(table_folder, schema, INDEX_COLUMNS + ["prompt", "response"], _conversation_facts)
    scored_folder = layout.SCORED.path(folder)
    scores = read_columns(scored_folder, SCORED, SCORE_COLUMNS) if scored_folder.is_dir() else None
    rows = _attach_scores(rows, scores)
    rows, prompt_of_row, first_row = _display_order(rows)
    keys = rows.column("key")
    rank = _ranks(folder, keys)
    prompt_index = (
        {pid: n for n, pid in enumerate(rows.column("prompt_id").take(pa.array(first_row)).to_pylist())} if len(first_row) else {}
    )
    kept = _kept_pairs(folder, keys, prompt_of_row, prompt_index)
    dropped, counts = _dropped_pairs(folder, keys, prompt_index)
    rank_entry = read_manifest(folder).stage("rank")
    return FolderRows(folder, rows, prompt_of_row, first_row, rank, kept, dropped, counts, rank_entry.config.get("pairs"))


def _attach_scores(rows: pa.Table, scores: pa.Table | None) -> pa.Table:
    n = rows.num_rows
    if scores is None or scores.num_rows == 0:
        for name, type_ in (
            ("score", pa.float64()),
            ("raw_score", pa.float64()),
            ("score_status", pa.string()),
            ("score_error", pa.string()),
        ):
            rows = rows.append_column(name, pa.nulls(n, type_))
        return rows
    at = pc.index_in(rows.column("key"), value_set=scores.column("key"))
    for name in SCORE_COLUMNS[1:]:
        rows = rows.append_column(name, scores.column(name).take(at))  # null where a row is not scored yet
    return rows


def _display_order(rows: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows grouped by prompt (prompts in order of first appearance, per round), then steering, then sample."""
    n = rows.num_rows
    if n == 0:
        return rows, np.zeros(0, np.int64), np.zeros(0, np.int64)
    encoded = one_array(pc.dictionary_encode(rows.column("prompt_id")))
    prompt_codes = encoded.indices.to_numpy()
    rounds = pc.fill_null(rows.column("round"), 0).to_numpy()
    # a prompt id can recur in two rounds of one folder (generate --round 2 into the same folder): key on both
    combined = rounds.astype(np.int64) * (len(encoded.dictionary) + 1) + prompt_codes
    _, first_seen, group = np.unique(combined, return_index=True, return_inverse=True)
    prompt_order = np.argsort(np.argsort(first_seen, kind="stable"), kind="stable")[group]  # rank of first appearance
    steering = rows.column("steering").to_numpy(zero_copy_only=False)
    steering_code = np.array([STEERINGS.index(s) if s in STEERINGS else len(STEERINGS) for s in steering], np.int64)
    sample = pc.fill_null(rows.column("sample_index"), 0).to_numpy()
    order = np.lexsort((sample, steering_code, prompt_order))
    rows = rows.take(pa.array(order))
    prompt_of_row = prompt_order[order]
    first_row = np.flatnonzero(np.r_[True, prompt_of_row[1:] != prompt_of_row[:-1]])
    return rows, prompt_of_row, first_row


def _ranks(folder: Path, keys: pa.ChunkedArray) -> np.ndarray:
    rank = np.zeros(len(keys), np.int32)
    path = layout.RANKED_LISTS.path(folder)
    if not path.is_file():
        return rank
    lists = _read_parquet(path, ["keys"])
    flat_keys = pc.list_flatten(lists.column("keys"))
    parents = pc.list_parent_indices(lists.column("keys")).to_numpy()
    starts = np.r_[0, np.cumsum(pc.list_value_length(lists.column("keys")).fill_null(0).to_numpy())][:-1]
    position = np.arange(len(flat_keys)) - starts[parents] + 1 if len(flat_keys) else np.zeros(0, np.int64)
    at = pc.index_in(keys, value_set=flat_keys).fill_null(-1).to_numpy()
    rank[at >= 0] = position[at[at >= 0]]
    return rank


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        names = pq.read_schema(path).names
    except Exception as error:
        raise NeatError(f"unreadable table ({error}); re-run the stage that writes it", file=path) from None
    missing = [name for name in columns or [] if name not in names]
    if missing:
        raise NeatError("missing column", file=path, field=missing[0])
    return pq.read_table(path, columns=columns)


def _positions(keys: pa.ChunkedArray, wanted: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.index_in(wanted, value_set=keys).fill_null(-1).to_numpy().astype(np.int64)


def _prompt_numbers(prompt_ids: list[str], rows_at: np.ndarray, prompt_of_row: np.ndarray, prompt_index: dict[str, int]) -> np.ndarray:
    """Prompt number of each pair: through its row when found, else through its prompt id (-1 if unknown)."""
    by_id = np.array([prompt_index.get(pid, -1) for pid in prompt_ids], np.int64)
    return np.where(rows_at >= 0, prompt_of_row[np.maximum(rows_at, 0)] if len(prompt_of_row) else -1, by_id)


def _kept_pairs(folder: Path, keys, prompt_of_row: np.ndarray, prompt_index: dict[str, int]) -> dict[str, np.ndarray]:
    path = layout.RANKED_PAIRS.path(folder)
    empty = {"p": np.zeros(0, np.int64), "c": np.zeros(0, np.int64), "r": np.zeros(0, np.int64), "m": np.zeros(0)}
    if not path.is_file():
        return empty
    pairs = _read_parquet(path, ["prompt_id", "key_chosen", "key_rejected", "score_chosen", "score_rejected"])
    if pairs.num_rows == 0:
        return empty
    chosen, rejected = _positions(keys, pairs.column("key_chosen")), _positions(keys, pairs.column("key_rejected"))
    margin = pc.subtract(pairs.column("score_chosen"), pairs.column("score_rejected")).fill_null(np.nan).to_numpy()
    return {
        "p": _prompt_numbers(pairs.column("prompt_id").to_pylist(), chosen, prompt_of_row, prompt_index),
        "c": chosen,
        "r": rejected,
        "m": margin,
    }


def _dropped_pairs(folder: Path, keys, prompt_index: dict[str, int]) -> tuple[dict[str, np.ndarray] | None, dict[str, int]]:
    """Per dropped pair (newer runs: ranked/dropped.parquet), else only the counts of the manifest's rank summary."""
    path = layout.RANKED_DROPPED.path(folder)
    if not path.is_file():
        summary = read_manifest(folder).record("rank", RankRecord).summary
        return None, {str(k): int(v) for k, v in (summary.get("dropped") or {}).items()}
    table = _read_parquet(path)
    for name in ("prompt_id", "reason"):
        if name not in table.column_names:
            raise NeatError("missing column", file=path, field=name)
    key_columns = [name for name in table.column_names if name.startswith("key")][:2]  # the two sides, in file order
    sides = [_positions(keys, table.column(name)) for name in key_columns]
    while len(sides) < 2:
        sides.append(np.full(table.num_rows, -1, np.int64))
    reasons = [str(r) for r in pc.fill_null(table.column("reason"), "unknown").to_pylist()]
    prompts = np.array([prompt_index.get(pid, -1) for pid in table.column("prompt_id").to_pylist()], np.int64)
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    return {"p": prompts, "a": sides[0], "b": sides[1], "reason": np.array(reasons, dtype=object)}, counts


def read_texts(folder: Path, prompt_ids: set[str] | None, keys: pa.Array) -> tuple[pa.Array, dict[str, list]]:
    """Response texts aligned with `keys`, and the conversation of each prompt id, for the given prompts
    (None = all). Texts are filtered shard by shard, so a sampled page never holds the whole run in memory."""
    source = source_folder(folder)
    wanted = pa.array(sorted(prompt_ids), pa.string()) if prompt_ids is not None else None

    def keep(table: pa.Table) -> pa.Table:
        return table if wanted is None else table.filter(pc.is_in(table.column("prompt_id"), value_set=wanted))

    table = read_columns(source[0], source[1], ["key", "prompt_id", "prompt", "response"], keep) if source else None
    if table is None or len(keys) == 0:
        return pa.nulls(len(keys), pa.string()), {}
    responses = table.column("response").take(pc.index_in(keys, value_set=table.column("key")))
    # one conversation per prompt id: the first row of each
    _, first = np.unique(table.column("prompt_id").to_numpy(zero_copy_only=False), return_index=True)
    firsts = table.take(pa.array(first))
    conversations = {
        pid: [[m["role"], m["content"]] for m in prompt or []]
        for pid, prompt in zip(firsts.column("prompt_id").to_pylist(), firsts.column("prompt").to_pylist())
    }
    return one_array(responses), conversations
