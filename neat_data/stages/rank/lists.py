"""Rank's lists: the scored rows' ok candidates, grouped by prompt and sorted best first, in Arrow (stages/rank/stage.py).

The order is found on the three sort keys alone, then each column is gathered once, a column per thread.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data.core.schemas import RANKED_LISTS, is_truncated, one_array


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


def ranked_lists(scored: pa.Table, *, drop_truncated: bool = False, keep_dataset_order: bool = False) -> tuple[pa.Table, pa.Array]:
    """(lists, source): one row per prompt, its ok candidates sorted by score (best first; ties by key, for a stable
    order), without the truncated ones when `drop_truncated`; and the row in `scored` of each candidate, in the order
    of the lists' flattened values (so a candidate's other columns are one `take` away, no key lookup).

    Built in Arrow: the order is found on the three sort keys alone, then each column is gathered once (the
    prompt once per list, at its first row), never the whole table filtered and then sorted: at 1M rows that
    moves every column twice (5.2 → 1.6 s, benchmarks/rank_export.py).

    `keep_dataset_order`: the dataset's own preference is kept (`dataset_order_rows`); `source` is then the row of
    each candidate as placed, and the scores stay those of the places.
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
    scores_at = rows  # the scores stay in score order even when the dataset's order moves its answers
    for name in SOURCE_COLUMNS:  # runs scored before the dataset columns existed: every candidate generated
        if name not in scored.column_names:
            kind = RANKED_LISTS.field(name).type.value_type
            scored = scored.append_column(pa.field(name, kind), pa.nulls(scored.num_rows, kind))
    if keep_dataset_order:
        rows = dataset_order_rows(rows, starts, one_array(scored.column("source_rank").take(rows)))
    flat = ["response", "key", "finish_reason", "steering", *SOURCE_COLUMNS]  # the largest first: threads pick them in order
    gathered = gather(scored, [(name, rows) for name in flat] + [("score", scores_at), ("prompt", first_rows)])
    names = ("response", "finish_reason", "score", "steering", "key", *SOURCE_COLUMNS)
    lists = pa.Table.from_arrays(
        [ids.take(pa.array(starts)), gathered["prompt"], *(pa.ListArray.from_arrays(offsets, gathered[name]) for name in names)],
        schema=RANKED_LISTS,
    )
    return lists, rows


SOURCE_COLUMNS = ("source_label", "source_rank")  # each candidate's, beside its response (null: a generated answer)


def dataset_order_rows(rows: pa.Array, starts: np.ndarray, source_rank: pa.Array) -> pa.Array:
    """`rows` (candidates in score order, lists beginning at `starts`) with the dataset's ranked answers of each list
    reordered among the places they hold: the best of those places goes to the answer the dataset prefers
    (source_rank 0), the next to rank 1, and so on (equal ranks: score order). Generated answers, and dataset
    answers without a rank, keep their place. The scores are not moved: the list stays sorted by score, each
    dataset answer taking the score of its place (docs/METHOD.md, "keeping the dataset's preference")."""
    ranked = ~np.asarray(source_rank.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    places = np.flatnonzero(ranked)
    if not len(places):
        return rows
    owner = np.searchsorted(starts, places, side="right")  # the list of each place
    rank = source_rank.to_numpy(zero_copy_only=False)[places].astype(np.int64)
    order = np.lexsort((places, rank, owner))  # by list, then the dataset's rank, then the place (score order)
    moved = np.arange(len(rows), dtype=np.int64)
    moved[places] = places[order]
    return rows.take(pa.array(moved))


def gather(table: pa.Table, jobs: list[tuple[str, pa.Array]]) -> dict[str, pa.Array]:
    """{column: table[column][rows]} for each (column, rows), a column per thread: Arrow's take runs on one core and
    releases the GIL, and nothing else runs while rank gathers its lists (1M rows: the takes are most of
    `ranked_lists`)."""
    from concurrent.futures import ThreadPoolExecutor

    def take(job: tuple[str, pa.Array]) -> pa.Array:
        return one_array(table.column(job[0]).take(job[1]))

    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1), thread_name_prefix="neat-gather") as pool:
        return dict(zip([name for name, _ in jobs], pool.map(take, jobs)))
