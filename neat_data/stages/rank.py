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
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.errors import NeatError
from neat_data.core.lineage import check_read, require_current, table_digest
from neat_data.core.manifest import MANIFEST, manifest_record
from neat_data.core.runfolder import RunLock, ShardedTable, StagedWrites, read_parquet
from neat_data.core.schemas import DROPPED_PAIRS, PAIRS, RANKED_LISTS, SCORED, check_columns, one_array
from neat_data.stages.rank_lengths import balance_lengths, length_summary, pair_lengths
from neat_data.stages.rank_lists import is_truncated, ranked_lists

DropReason = Literal["degenerate", "tie", "margin", "truncated", "length-band", "length-balance"]
# The scored columns rank_tables reads: run_rank reads only these (the scored table's other columns are most of its
# bytes on disk, and reading them was a third of rank's time at 1M rows).
RANK_READS = ("key", "prompt_id", "prompt", "steering", "response", "finish_reason", "completion_tokens", "score", "score_status")


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


@dataclass
class Groups:
    """Candidates grouped by list, best first within each: group k is the list in row `rows[k]`, its candidates the
    flat positions `positions[starts[k]:ends[k]]` (`positions` None: every candidate of every list, so that a
    candidate's position is its own index and no array the size of all candidates is built)."""

    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    positions: np.ndarray | None = None

    @classmethod
    def every_candidate(cls, lengths: np.ndarray) -> Groups:
        """Every list whole, from the number of candidates of each."""
        ends = np.cumsum(lengths)
        return cls(np.arange(len(lengths), dtype=np.int64), ends - lengths, ends)

    @classmethod
    def some_candidates(cls, owner: np.ndarray, positions: np.ndarray) -> Groups:
        """The candidates at `positions` (grouped by list), `owner` holding the list row of each."""
        starts = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]])) if len(positions) else np.empty(0, np.int64)
        return cls(owner[starts], starts, np.append(starts[1:], len(positions)).astype(np.int64), positions)

    def at(self, index: np.ndarray) -> np.ndarray:
        return index if self.positions is None else self.positions[index]


def strategy_pairs(config: RankConfig, groups: Groups, steering: np.ndarray | None) -> np.ndarray:
    """The strategy's candidate pairs over `groups`: rows (list row, chosen, rejected, labelled by score?) with the
    sides as flat positions, list by list, each list's pairs in `candidate_pairs` order. best-vs-worst, the
    default, in numpy; the others list by list through `candidate_pairs`."""
    if not len(groups.rows):
        return np.empty((0, 4), dtype=np.int64)
    starts, ends = groups.starts, groups.ends
    if config.pairs == "best-vs-worst":
        two = ends - starts >= 2
        return np.stack([groups.rows[two], groups.at(starts[two]), groups.at(ends[two] - 1), np.ones(int(two.sum()), np.int64)], 1)
    found = []
    for row, start, end in zip(groups.rows.tolist(), starts.tolist(), ends.tolist()):
        at = groups.at(np.arange(start, end)).tolist()
        found += [
            (row, at[c], at[r], int(by_score))
            for c, r, by_score in candidate_pairs(config, end - start, [] if steering is None else steering[at].tolist())
        ]
    return np.array(found, dtype=np.int64).reshape(-1, 4)


@dataclass
class Pairing:
    """What `make_pairs` found: the PAIRS and DROPPED_PAIRS tables, and for each kept pair its score gap and the
    positions of its two sides among the lists' flattened candidates."""

    pairs: pa.Table
    dropped: pa.Table
    gaps: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    def keep(self, mask: np.ndarray, more_dropped: pa.Table) -> Pairing:
        """The kept pairs where `mask` holds; `more_dropped` (the others, with their reason) goes after the dropped."""
        return Pairing(
            self.pairs.filter(pa.array(mask)),
            pa.concat_tables([self.dropped, more_dropped]),
            self.gaps[mask],
            self.chosen[mask],
            self.rejected[mask],
        )


def make_pairs(config: RankConfig, lists: pa.Table) -> Pairing:
    """The pairs, the dropped pairs with their reason, and the kept pairs' gaps and sides, from the lists of *all* ok
    candidates. Pairs are positions into the flattened candidate arrays, found and judged with numpy over the
    whole table (only the texts of the paired candidates are compared in Python); the columns are gathered in
    Arrow. The dropped pairs come list by list: those lost to truncation first, then the strategy's own."""
    none = np.empty(0, dtype=np.int64)
    if not lists.num_rows:
        return Pairing(PAIRS.empty_table(), DROPPED_PAIRS.empty_table(), np.empty(0), none, none)
    lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists.column("responses")).to_numpy(zero_copy_only=False).astype(np.int64)
    steering = None  # only pos-vs-neg reads it
    if config.pairs == "pos-vs-neg":
        steering = np.asarray(pc.list_flatten(lists.column("steering")).to_pylist(), dtype=object)
    lost = np.empty((0, 4), dtype=np.int64)
    groups = Groups.every_candidate(lengths)
    truncated = (
        is_truncated(pc.list_flatten(lists.column("finish_reason"))).to_numpy(zero_copy_only=False) if config.drop_truncated else None
    )
    if truncated is not None and truncated.any():
        owner = np.repeat(np.arange(lists.num_rows, dtype=np.int64), lengths)  # list row of each flat candidate
        everyone = np.arange(len(owner), dtype=np.int64)
        kept_positions = everyone[~truncated]
        touched = np.zeros(lists.num_rows, dtype=bool)
        touched[owner[truncated]] = True  # lists with a truncated candidate: what the strategy would have paired there
        whole = everyone[touched[owner]]
        lost = strategy_pairs(config, Groups.some_candidates(owner[whole], whole), steering)
        lost = lost[truncated[lost[:, 1]] | truncated[lost[:, 2]]]
        groups = Groups.some_candidates(owner[kept_positions], kept_positions)
    pairs = strategy_pairs(config, groups, steering)
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
    return Pairing(
        _gather_pairs(lists, kept[:, 0], kept[:, 1], kept[:, 2], [text.filter(pa.array(keep)) for text in texts]),
        _gather_dropped(lists, dropped[:, 0], dropped[:, 1], dropped[:, 2], reasons[order].tolist()),
        gaps[keep],
        kept[:, 1],
        kept[:, 2],
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


@dataclass
class Ranked:
    """The lists rank writes (`lists`), and those of every ok candidate the pairs are formed from (`everything`: the
    same table unless drop_truncated), with the completion_tokens of each of its flattened candidates (`tokens`; None
    when the scored rows have no such column). Nothing in it refers to the scored table: the caller may let it go."""

    lists: pa.Table
    everything: pa.Table
    tokens: pa.Array | None


def rank_lists(config: RankConfig, scored: pa.Table) -> Ranked:
    everything, source = ranked_lists(scored)
    tokens = one_array(scored.column("completion_tokens").take(source)) if "completion_tokens" in scored.column_names else None
    return Ranked(ranked_lists(scored, drop_truncated=True)[0] if config.drop_truncated else everything, everything, tokens)


def rank_pairs(config: RankConfig, ranked: Ranked) -> tuple[pa.Table, pa.Table, RankSummary]:
    """(pairs, dropped pairs, summary) from the lists of `rank_lists`."""
    pairing = make_pairs(config, ranked.everything)
    lengths = pair_lengths(pairing.pairs, pairing.chosen, pairing.rejected, ranked.tokens) if pairing.pairs.num_rows else None
    if config.balance_length is not None and lengths is not None:
        kept, unbalanced = balance_lengths(pairing.pairs, lengths, config.balance_length)
        pairing, lengths = pairing.keep(kept, unbalanced), lengths.keep(kept)
    margins = pairing.gaps.tolist()
    stats = {}
    if margins:
        stats = {"mean": statistics.fmean(margins), "median": statistics.median(margins), "min": min(margins), "max": max(margins)}
    candidates = int(pc.sum(pc.list_value_length(ranked.lists.column("responses"))).as_py() or 0)
    all_candidates = int(pc.sum(pc.list_value_length(ranked.everything.column("responses"))).as_py() or 0)
    reasons = pc.value_counts(pairing.dropped.column("reason")).to_pylist() if pairing.dropped.num_rows else []
    summary = RankSummary(
        prompts=ranked.lists.num_rows,
        candidates=candidates,
        pairs_kept=pairing.pairs.num_rows,
        dropped={reason["values"]: reason["counts"] for reason in reasons},
        margins=stats,
        truncated_left_out=all_candidates - candidates,
        length=length_summary(lengths) if lengths is not None else {},
    )
    return pairing.pairs, pairing.dropped, summary


def rank_tables(config: RankConfig, scored: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table, RankSummary]:
    """The pure core: scored rows → (ranked lists, pairs, dropped pairs, summary)."""
    ranked = rank_lists(config, scored)
    return ranked.lists, *rank_pairs(config, ranked)


def run_rank(config: RankConfig, argv: list[str] | None = None) -> RankSummary:
    run_dir = Path(config.run)
    if not (run_dir / "scored").is_dir():
        raise NeatError("no scored/ in this run folder (run `neat-data score` first)", file=run_dir)
    out = run_dir / "ranked"
    with RunLock(run_dir):
        # read (and checked) before anything is written: scores finished, and scored from the generations as they are now
        manifest = require_current(run_dir, "scored")
        scored = ShardedTable(run_dir / "scored", SCORED).read(list(RANK_READS))
        check_columns(scored, pa.schema([SCORED.field(name) for name in RANK_READS]), str(run_dir / "scored"))
        reads = {"scored": check_read(run_dir, "scored", scored, manifest)}
        with StagedWrites() as writes:  # lists.parquet is written while the pairs are formed; all three land together
            ranked = rank_lists(config, scored)
            del scored  # the lists hold their own copies: the pairs and the writers reuse its memory
            writes.write(out / "lists.parquet", ranked.lists)
            pairs, dropped, summary = rank_pairs(config, ranked)
            writes.write(out / "pairs.parquet", pairs)
            writes.write(out / "dropped.parquet", dropped)
            wrote = {
                f"ranked/{name}": table_digest(f"ranked/{name}", table)
                for name, table in (("lists", ranked.lists), ("pairs", pairs), ("dropped", dropped))
            }
            manifest.stages["rank"] = {
                "config": config.model_dump(mode="json"),
                "command": argv,
                "finished": True,
                "summary": summary.__dict__,
                "reads": reads,
                "wrote": wrote,
            }
            writes.write_json(run_dir / MANIFEST, manifest_record(manifest))  # with the tables, after them
    return summary


def read_ranked(run_dir: Path, name: str) -> pa.Table:
    path = Path(run_dir) / "ranked" / f"{name}.parquet"
    if not path.is_file():
        raise NeatError("not ranked yet (run `neat-data rank` first)", file=path)
    table = read_parquet(path)
    check_columns(table, RANKED_LISTS if name == "lists" else PAIRS, str(path))
    return table
