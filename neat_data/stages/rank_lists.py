"""Rank's lists: the scored rows' ok candidates, grouped by prompt and sorted best first, in Arrow (stages/rank.py).

The order is found on the three sort keys alone, then each column is gathered once, a column per thread.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data.core.schemas import RANKED_LISTS, one_array

TRUNCATED = "length"  # the finish reason of a response cut by max_tokens


def is_truncated(finish_reasons: pa.ChunkedArray | pa.Array) -> pa.Array:
    """finish_reason == "length", with null (unknown) as not truncated."""
    return pc.fill_null(pc.equal(finish_reasons, TRUNCATED), False)


def list_order(keys: pa.Table) -> pa.Array:
    """Indices sorting `keys` (prompt_id, score, key) by prompt_id, then score descending, then key: stable, as
    `Table.sort_by`. The prompt ids are replaced by the rank of each among the distinct ids first (a hash pass and
    a sort of the distinct ids): comparing strings row against row is most of the cost (1M rows: 1.2 → 0.45 s)."""
    ids = keys.column("prompt_id")
    by = [("prompt_id", "ascending"), ("score", "descending"), ("key", "ascending")]
    if ids.null_count:
        return pc.sort_indices(keys, sort_keys=by)
    encoded = one_array(pc.dictionary_encode(ids))
    distinct_order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank_of_code = np.empty(len(distinct_order), dtype=np.int64)
    rank_of_code[distinct_order] = np.arange(len(distinct_order))
    ranks = rank_of_code[encoded.indices.to_numpy(zero_copy_only=False)]
    return pc.sort_indices(keys.set_column(0, "prompt_id", pa.array(ranks)), sort_keys=by)


def ranked_lists(scored: pa.Table, *, drop_truncated: bool = False) -> tuple[pa.Table, pa.Array]:
    """(lists, source): one row per prompt, its ok candidates sorted by score (best first; ties by key, for a stable
    order), without the truncated ones when `drop_truncated`; and the row in `scored` of each candidate, in the order
    of the lists' flattened values (so a candidate's other columns are one `take` away, no key lookup).

    Built in Arrow: the order is found on the three sort keys alone, then each column is gathered once (the
    prompt once per list, at its first row), never the whole table filtered and then sorted: at 1M rows that
    moves every column twice (5.2 → 1.6 s, benchmarks/rank_export.py).
    """
    keep = pc.equal(scored.column("score_status"), "ok")
    if drop_truncated:
        keep = pc.and_(keep, pc.invert(is_truncated(scored.column("finish_reason"))))
    rows = pc.indices_nonzero(pc.fill_null(keep, False))
    n = len(rows)
    if n == 0:
        return RANKED_LISTS.empty_table(), pa.array([], pa.uint64())
    everyone = n == scored.num_rows  # the common case: no row to leave out, so no copy of the sort keys either
    sort_keys = scored.select(["prompt_id", "score", "key"])
    sort_keys = (sort_keys if everyone else sort_keys.take(rows)).combine_chunks()
    order = list_order(sort_keys)
    rows = order if everyone else rows.take(order)  # rows of `scored`, in list order (a stable sort of the kept rows)
    ids = sort_keys.column("prompt_id").take(order)
    changes = pc.indices_nonzero(pc.not_equal(ids.slice(1), ids.slice(0, n - 1))).to_numpy() + 1
    starts = np.concatenate([[0], changes]).astype(np.int32)
    offsets = pa.array(np.concatenate([starts, [n]]).astype(np.int32))
    first_rows = rows.take(pa.array(starts))
    flat = ["response", "key", "finish_reason", "score", "steering"]  # the largest first: threads pick them in order
    gathered = gather(scored, [(name, rows) for name in flat] + [("prompt", first_rows)])
    lists = pa.Table.from_arrays(
        [
            ids.take(pa.array(starts)),
            gathered["prompt"],
            *(pa.ListArray.from_arrays(offsets, gathered[name]) for name in ("response", "finish_reason", "score", "steering", "key")),
        ],
        schema=RANKED_LISTS,
    )
    return lists, rows


def gather(table: pa.Table, jobs: list[tuple[str, pa.Array]]) -> dict[str, pa.Array]:
    """{column: table[column][rows]} for each (column, rows), a column per thread: Arrow's take runs on one core and
    releases the GIL, and nothing else runs while rank gathers its lists (1M rows: the takes are most of
    `ranked_lists`)."""
    from concurrent.futures import ThreadPoolExecutor

    def take(job: tuple[str, pa.Array]) -> pa.Array:
        return one_array(table.column(job[0]).take(job[1]))

    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1), thread_name_prefix="neat-gather") as pool:
        return dict(zip([name for name, _ in jobs], pool.map(take, jobs)))
