"""Rank stage (pure, no engine): scored rows → one ranked list per prompt + preference pairs.

In:  `<run>/scored/` (schema SCORED). Out: `<run>/ranked/lists.parquet` (RANKED_LISTS: candidates best
first, each with its finish reason), `<run>/ranked/pairs.parquet` (PAIRS) and `<run>/ranked/dropped.parquet`
(DROPPED_PAIRS: every pair the strategy formed and dropped, with its reason), plus the `rank` entry of the
manifest.
Run: `neat-data rank runs/demo --pairs best-vs-worst --min-margin 0.1 [--drop-truncated] [--balance-length 2]`.

Candidates are the rows with `score_status = ok`. Pair strategies:
- `best-vs-worst`: the top and the bottom of each list;
- `pos-vs-neg`: every positive-prompt × negative-prompt response; `--pos-vs-neg-by construction` (RLCD:
  the positive one is chosen, whatever the scores) or `score` (the higher score is chosen);
- `all-pairs`: every pair of the list, higher score chosen.
A pair is dropped, and counted by reason, when both texts are the same after whitespace normalisation
(`degenerate`: no signal), when the scores tie (`tie`), or when the gap is below `min_margin` (`margin`;
score-labelled strategies only).
`--drop-truncated` leaves out candidates whose response stopped at max_tokens (finish_reason "length"):
they are in no list and no pair, and counted. The strategy then runs on the remaining candidates; the
pairs it would have formed on the whole list that have a truncated side are recorded as dropped with
reason `truncated` (for pos-vs-neg and all-pairs exactly the pairs lost; for best-vs-worst the top-bottom
pair it replaced, when a side of it was truncated).
`--balance-length R` then keeps the pairs whose longer side is at most R times the shorter (completion_tokens, else
words: reason `length-band` for the others) and drops the surplus of the commoner direction — chosen longer or chosen
shorter — smallest score gap first (reason `length-balance`), so that the kept pairs' length AUC is 0.5: a model
trained on them cannot learn "longer wins". The summary's length line (and `neat-data audit`) shows the effect.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.errors import NeatError
from neat_data.core.manifest import update_manifest
from neat_data.core.runfolder import RunLock, ShardedTable, atomic_write_table, read_parquet
from neat_data.core.schemas import DROPPED_PAIRS, PAIRS, RANKED_LISTS, SCORED, check_columns

DropReason = Literal["degenerate", "tie", "margin", "truncated", "length-band", "length-balance"]
TRUNCATED = "length"  # the finish reason of a response cut by max_tokens


PairStrategy = Literal["best-vs-worst", "pos-vs-neg", "all-pairs"]


class RankConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder holding scored/.")
    pairs: PairStrategy = Field(
        "best-vs-worst", description="Pair strategy: the top and bottom of each list, every pos × neg response, or every pair."
    )
    pos_vs_neg_by: Literal["construction", "score"] = Field(
        "construction", description="pos-vs-neg: the positive response is chosen (RLCD), or the higher score."
    )
    min_margin: float = Field(0.0, ge=0.0, description="Drop score-labelled pairs whose score gap is smaller.")
    drop_truncated: bool = Field(False, description="Leave out candidates cut at max_tokens (finish_reason length): in no list, no pair.")
    balance_length: float | None = Field(
        None,
        gt=1.0,
        description="Keep pairs whose longer side is at most this many times the shorter (tokens, else words), then drop the "
        "surplus of the commoner direction (chosen longer / shorter), smallest score gap first: length stops predicting the label.",
    )


@dataclass
class RankSummary:
    prompts: int
    candidates: int
    pairs_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    margins: dict[str, float] = field(default_factory=dict)
    truncated_left_out: int = 0  # candidates left out by drop_truncated
    length: dict[str, Any] = field(default_factory=dict)  # the kept pairs' length figures (stages/data_audit_measures.py)

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dropped.items())) or "none"
        gap = ", ".join(f"{k} {v:.3f}" for k, v in self.margins.items()) or "n/a"
        truncated = f", truncated candidates left out {self.truncated_left_out}" if self.truncated_left_out else ""
        lines = [
            f"prompts {self.prompts}, candidates {self.candidates}{truncated}, pairs kept {self.pairs_kept}, dropped: {dropped}",
            f"score gap of kept pairs: {gap}",
        ]
        if self.length.get("pairs"):
            lines.append(
                f"length ({self.length['unit']}): chosen longer in {self.length['share_chosen_longer']:.1%} of pairs, length AUC "
                f"{self.length['length_auc']:.3f}, median chosen/rejected ratio {self.length['median_ratio']:.2f} "
                "(0.5 = length says nothing; `neat-data audit RUN` for the full audit)"
            )
        return lines


def normalise(text: str) -> str:
    return " ".join(text.split())


def same_when_normalised(first: pa.Array, second: pa.Array) -> np.ndarray:
    """normalise(first[i]) == normalise(second[i]) for each i. Texts equal after normalising begin and end with the
    same character once trimmed (Arrow's whitespace is Python's, every code point checked in tests/test_rank.py), so
    only the pairs that do are compared in Python: most pairs are told apart in Arrow (1M rows: 0.8 → 0.1 s)."""
    trimmed = [pc.utf8_trim_whitespace(texts) for texts in (first, second)]
    heads, tails = ([pc.utf8_slice_codeunits(t, start, stop) for t in trimmed] for start, stop in ((0, 1), (-1, None)))
    maybe = pc.fill_null(pc.and_(pc.equal(*heads), pc.equal(*tails)), True)  # a null (no text) goes to Python, as before
    at = pc.indices_nonzero(maybe)
    same = np.zeros(len(first), dtype=bool)
    pairs = zip(first.take(at).to_pylist(), second.take(at).to_pylist())
    same[at.to_numpy()] = np.array([normalise(a) == normalise(b) for a, b in pairs], dtype=bool)
    return same


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
    encoded = pc.dictionary_encode(ids).combine_chunks()
    distinct_order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank_of_code = np.empty(len(distinct_order), dtype=np.int64)
    rank_of_code[distinct_order] = np.arange(len(distinct_order))
    ranks = rank_of_code[encoded.indices.to_numpy(zero_copy_only=False)]
    return pc.sort_indices(keys.set_column(0, "prompt_id", pa.array(ranks)), sort_keys=by)


def ranked_lists(scored: pa.Table, *, drop_truncated: bool = False) -> pa.Table:
    """One row per prompt: ok candidates sorted by score (best first; ties by key, for a stable order),
    without the truncated ones when `drop_truncated`.

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
        return RANKED_LISTS.empty_table()
    sort_keys = scored.select(["prompt_id", "score", "key"]).take(rows).combine_chunks()
    order = list_order(sort_keys)
    rows = rows.take(order)  # rows of `scored`, in list order (a stable sort of the kept rows, as before)
    ids = sort_keys.column("prompt_id").take(order)
    changes = pc.indices_nonzero(pc.not_equal(ids.slice(1), ids.slice(0, n - 1))).to_numpy() + 1
    starts = np.concatenate([[0], changes]).astype(np.int32)
    offsets = pa.array(np.concatenate([starts, [n]]).astype(np.int32))
    first_rows = rows.take(pa.array(starts))

    def as_lists(name: str) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, scored.column(name).take(rows).combine_chunks())

    return pa.Table.from_arrays(
        [
            ids.take(pa.array(starts)),
            scored.column("prompt").take(first_rows).combine_chunks(),
            as_lists("response"),
            as_lists("finish_reason"),
            as_lists("score"),
            as_lists("steering"),
            as_lists("key"),
        ],
        schema=RANKED_LISTS,
    )


def candidate_pairs(config: RankConfig, n: int, steering: list[str]) -> list[tuple[int, int, bool]]:
    """(chosen index, rejected index, labelled by score?) over a list sorted best first."""
    if n < 2:
        return []
    if config.pairs == "best-vs-worst":
        return [(0, n - 1, True)]
    if config.pairs == "all-pairs":
        return [(i, j, True) for i, j in combinations(range(n), 2)]
    positives = [i for i in range(n) if steering[i] == "pos"]
    negatives = [i for i in range(n) if steering[i] == "neg"]
    if config.pos_vs_neg_by == "construction":
        return [(p, q, False) for p in positives for q in negatives]
    return [(min(p, q), max(p, q), True) for p in positives for q in negatives]  # lower index = higher score


def strategy_pairs(config: RankConfig, lists: np.ndarray, positions: np.ndarray, steering: np.ndarray) -> np.ndarray:
    """The strategy's candidate pairs over the candidates `positions` (flat indices, grouped by list, best first
    within each list; `lists` holds each one's list row): rows (list row, chosen, rejected, labelled by score?),
    list by list, each list's pairs in `candidate_pairs` order. best-vs-worst, the default, in numpy; the others
    list by list through `candidate_pairs`."""
    if not len(positions):
        return np.empty((0, 4), dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], lists[1:] != lists[:-1]]))
    ends = np.append(starts[1:], len(positions))
    if config.pairs == "best-vs-worst":
        two = ends - starts >= 2
        return np.stack([lists[starts[two]], positions[starts[two]], positions[ends[two] - 1], np.ones(int(two.sum()), np.int64)], 1)
    found = []
    for start, end in zip(starts.tolist(), ends.tolist()):
        at = positions[start:end].tolist()
        found += [
            (int(lists[start]), at[c], at[r], int(by_score))
            for c, r, by_score in candidate_pairs(config, end - start, steering[at].tolist())
        ]
    return np.array(found, dtype=np.int64).reshape(-1, 4)


def make_pairs(config: RankConfig, lists: pa.Table) -> tuple[pa.Table, pa.Table, list[float]]:
    """(pairs, dropped pairs with their reason, score gaps of the kept pairs) from the lists of *all* ok
    candidates. Pairs are positions into the flattened candidate arrays, found and judged with numpy over the
    whole table (only the texts of the paired candidates are compared in Python); the columns are gathered in
    Arrow. The dropped pairs come list by list: those lost to truncation first, then the strategy's own."""
    if not lists.num_rows:
        return PAIRS.empty_table(), DROPPED_PAIRS.empty_table(), []
    lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists.column("responses")).to_numpy(zero_copy_only=False).astype(np.int64)
    owner = np.repeat(np.arange(lists.num_rows, dtype=np.int64), lengths)  # list row of each flat candidate
    flat_steering = pc.list_flatten(lists.column("steering"))
    steering = np.asarray(flat_steering.to_pylist() if config.pairs == "pos-vs-neg" else [None] * len(flat_steering), dtype=object)
    truncated = is_truncated(pc.list_flatten(lists.column("finish_reason"))).to_numpy(zero_copy_only=False)
    everyone = np.arange(len(owner), dtype=np.int64)
    lost = np.empty((0, 4), dtype=np.int64)
    kept_positions = everyone
    if config.drop_truncated and truncated.any():
        kept_positions = everyone[~truncated]
        touched = np.zeros(lists.num_rows, dtype=bool)
        touched[owner[truncated]] = True  # lists with a truncated candidate: what the strategy would have paired there
        whole = everyone[touched[owner]]
        lost = strategy_pairs(config, owner[whole], whole, steering)
        lost = lost[truncated[lost[:, 1]] | truncated[lost[:, 2]]]
    pairs = strategy_pairs(config, owner[kept_positions], kept_positions, steering)
    chosen, rejected, by_score = pairs[:, 1], pairs[:, 2], pairs[:, 3].astype(bool)
    scores = pc.list_flatten(lists.column("scores")).to_numpy(zero_copy_only=False)
    gaps = scores[chosen] - scores[rejected]
    responses = pc.list_flatten(lists.column("responses"))
    texts = responses.take(pa.array(chosen)), responses.take(pa.array(rejected))
    same_text = same_when_normalised(*texts)
    reason = np.full(len(pairs), "", dtype=object)
    reason[by_score & (gaps < config.min_margin)] = "margin"  # the checks in reverse order: the first that holds wins
    reason[by_score & (gaps == 0)] = "tie"
    reason[same_text] = "degenerate"
    keep = reason == ""
    dropped = np.concatenate([lost[:, :3], pairs[~keep, :3]])
    reasons = np.concatenate([np.full(len(lost), "truncated", dtype=object), reason[~keep]])
    order = np.argsort(np.concatenate([2 * lost[:, 0], 2 * pairs[~keep, 0] + 1]), kind="stable")  # by list; lost ones first
    dropped, kept = dropped[order], pairs[keep]
    return (
        _gather_pairs(lists, kept[:, 0], kept[:, 1], kept[:, 2], [text.filter(pa.array(keep)) for text in texts]),
        _gather_dropped(lists, dropped[:, 0], dropped[:, 1], dropped[:, 2], reasons[order].tolist()),
        gaps[keep].tolist(),
    )


def _flat(lists: pa.Table, name: str) -> pa.Array:
    return pc.list_flatten(lists.column(name))


def _gather_pairs(lists: pa.Table, rows: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, texts: list[pa.Array]) -> pa.Table:
    """The PAIRS table; `texts`: the chosen and rejected responses, already gathered (by the degenerate check)."""
    if not len(rows):
        return PAIRS.empty_table()
    rows_index, chosen_index, rejected_index = pa.array(rows), pa.array(chosen), pa.array(rejected)
    columns = [lists.column("prompt_id").take(rows_index), lists.column("prompt").take(rows_index), *texts]
    for name in ("scores", "steering", "keys", "finish_reason"):
        values = _flat(lists, name)
        columns += [values.take(chosen_index), values.take(rejected_index)]
    return pa.Table.from_arrays(columns, schema=PAIRS)


def _gather_dropped(lists: pa.Table, rows: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, reasons: list[str]) -> pa.Table:
    if not len(rows):
        return DROPPED_PAIRS.empty_table()
    keys, scores = _flat(lists, "keys"), _flat(lists, "scores")
    chosen_index, rejected_index = pa.array(chosen), pa.array(rejected)
    return pa.Table.from_arrays(
        [
            lists.column("prompt_id").take(pa.array(rows)),
            keys.take(chosen_index),
            keys.take(rejected_index),
            scores.take(chosen_index),
            scores.take(rejected_index),
            pa.array(reasons, pa.string()),
        ],
        schema=DROPPED_PAIRS,
    )


def pair_lengths(pairs: pa.Table, scored: pa.Table) -> tuple[np.ndarray, np.ndarray, str]:
    """(chosen lengths, rejected lengths, unit) of the pairs: completion_tokens of their scored rows, else words."""
    from neat_data.stages.data_audit_measures import response_lengths

    keys = pa.concat_arrays([pairs.column("key_chosen").combine_chunks(), pairs.column("key_rejected").combine_chunks()])
    texts = pa.concat_arrays([pairs.column("chosen").combine_chunks(), pairs.column("rejected").combine_chunks()])
    tokens = scored.column("completion_tokens").combine_chunks() if "completion_tokens" in scored.column_names else None
    lengths, unit = response_lengths(keys, texts, scored.column("key").combine_chunks(), tokens)
    return lengths[: pairs.num_rows], lengths[pairs.num_rows :], unit


def balance_lengths(pairs: pa.Table, scored: pa.Table, band: float) -> tuple[pa.Table, pa.Table]:
    """(kept pairs, dropped ones with reason length-band / length-balance): pairs whose length ratio exceeds `band` go,
    then the surplus of the commoner direction (chosen longer vs chosen shorter), smallest score gap first (ties by
    key), so that as many kept pairs have the longer side chosen as rejected."""
    from neat_data.stages.data_audit_measures import length_ratio

    chosen, rejected, _ = pair_lengths(pairs, scored)
    ratio = length_ratio(chosen, rejected)
    outside = np.maximum(ratio, 1 / ratio) > band
    longer, shorter = (chosen > rejected) & ~outside, (chosen < rejected) & ~outside
    surplus_side = longer if longer.sum() > shorter.sum() else shorter
    surplus = abs(int(longer.sum()) - int(shorter.sum()))
    gap = pc.subtract(pairs.column("score_chosen"), pairs.column("score_rejected")).to_numpy(zero_copy_only=False)
    keys = np.asarray(pairs.column("key_chosen").to_pylist(), dtype=object)
    candidates = np.flatnonzero(surplus_side)
    order = sorted(candidates.tolist(), key=lambda i: (gap[i], keys[i]))[:surplus]
    balanced = np.zeros(pairs.num_rows, dtype=bool)
    balanced[order] = True
    reasons = np.where(outside, "length-band", np.where(balanced, "length-balance", ""))
    drop = reasons != ""
    gone = pairs.filter(pa.array(drop))
    dropped = pa.Table.from_arrays(
        [
            gone.column("prompt_id"),
            gone.column("key_chosen"),
            gone.column("key_rejected"),
            gone.column("score_chosen"),
            gone.column("score_rejected"),
            pa.array(reasons[drop].tolist(), pa.string()),
        ],
        schema=DROPPED_PAIRS,
    )
    return pairs.filter(pa.array(~drop)), dropped


def length_summary(pairs: pa.Table, scored: pa.Table) -> dict[str, Any]:
    from neat_data.stages.data_audit_measures import length_ratio, length_wins

    if pairs.num_rows == 0:
        return {}
    chosen, rejected, unit = pair_lengths(pairs, scored)
    return {
        "pairs": pairs.num_rows,
        "unit": unit,
        "share_chosen_longer": float((chosen > rejected).mean()),
        "length_auc": float(length_wins(chosen, rejected).mean()),
        "median_ratio": float(np.median(length_ratio(chosen, rejected))),
    }


def rank_tables(config: RankConfig, scored: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table, RankSummary]:
    """The pure core: scored rows → (ranked lists, pairs, dropped pairs, summary)."""
    everything = ranked_lists(scored)
    pairs, dropped, margins = make_pairs(config, everything)
    if config.balance_length is not None and pairs.num_rows:
        pairs, unbalanced = balance_lengths(pairs, scored, config.balance_length)
        dropped = pa.concat_tables([dropped, unbalanced])
        margins = pc.subtract(pairs.column("score_chosen"), pairs.column("score_rejected")).to_pylist()
    lists = ranked_lists(scored, drop_truncated=True) if config.drop_truncated else everything
    stats = {}
    if margins:
        stats = {"mean": statistics.fmean(margins), "median": statistics.median(margins), "min": min(margins), "max": max(margins)}
    candidates = int(pc.sum(pc.list_value_length(lists.column("responses"))).as_py() or 0)
    all_candidates = int(pc.sum(pc.list_value_length(everything.column("responses"))).as_py() or 0)
    summary = RankSummary(
        prompts=lists.num_rows,
        candidates=candidates,
        pairs_kept=pairs.num_rows,
        dropped=dict(Counter(dropped.column("reason").to_pylist())),
        margins=stats,
        truncated_left_out=all_candidates - candidates,
        length=length_summary(pairs, scored),
    )
    return lists, pairs, dropped, summary


def run_rank(config: RankConfig, argv: list[str] | None = None) -> RankSummary:
    run_dir = Path(config.run)
    if not (run_dir / "scored").is_dir():
        raise NeatError("no scored/ in this run folder (run `neat-data score` first)", file=run_dir)
    with RunLock(run_dir):
        scored = ShardedTable(run_dir / "scored", SCORED).read()
        check_columns(scored, SCORED, str(run_dir / "scored"))
        lists, pairs, dropped, summary = rank_tables(config, scored)
        atomic_write_table(run_dir / "ranked" / "lists.parquet", lists)
        atomic_write_table(run_dir / "ranked" / "pairs.parquet", pairs)
        atomic_write_table(run_dir / "ranked" / "dropped.parquet", dropped)
        update_manifest(
            run_dir, "rank", {"config": config.model_dump(mode="json"), "command": argv, "finished": True, "summary": summary.__dict__}
        )
    return summary


def read_ranked(run_dir: Path, name: str) -> pa.Table:
    path = Path(run_dir) / "ranked" / f"{name}.parquet"
    if not path.is_file():
        raise NeatError("not ranked yet (run `neat-data rank` first)", file=path)
    table = read_parquet(path)
    check_columns(table, RANKED_LISTS if name == "lists" else PAIRS, str(path))
    return table
