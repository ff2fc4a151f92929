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
Over a list holding the user's dataset answers (steering `dataset`, docs/FORMATS.md), labelled by the dataset:
- `original`: the dataset's preferred answer (its lowest source_rank) vs each answer it ranks below it: the
  original pairs, carried through unchanged;
- `chosen-vs-neg`: the dataset's preferred answer vs each negative-prompt answer (hard negatives);
- `pos-vs-rejected`: each positive-prompt answer vs the dataset's least preferred answer (its highest source_rank).
`--pairs` takes several, comma-separated (`original,chosen-vs-neg`): each pair records the strategy that formed it
(`strategy`), and a pair two strategies form is kept once, by the first named. Every pair records each side's
source (`steering_*`, `source_label_*`).
`--dataset-order keep` keeps the dataset's own preference inside each list (lists.py::dataset_order_rows).
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
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.lineage import check_read, require_current, table_digest
from neat_data.core.manifest import MANIFEST, RankRecord, manifest_record, read_manifest
from neat_data.core.runfolder import RunLock, StagedWrites, read_parquet
from neat_data.core.schemas import DROPPED_PAIRS, PAIRS, RANKED_LISTS, SCORED, check_columns, is_truncated, one_array
from neat_data.core.stage import Stage, StageResult
from neat_data.stages.rank.lengths import balance_lengths, length_summary, pair_lengths
from neat_data.stages.rank.lists import ranked_lists

DropReason = Literal["degenerate", "tie", "margin", "truncated", "length-band", "length-balance"]
# The scored columns rank_tables reads: run_rank reads only these (the scored table's other columns are most of its
# bytes on disk, and reading them was a third of rank's time at 1M rows).
RANK_READS = (
    "key",
    "prompt_id",
    "prompt",
    "steering",
    "response",
    "finish_reason",
    "completion_tokens",
    "score",
    "score_status",
    "source_label",
    "source_rank",
)


# The one list of pair strategies (the CLI's --pairs choices and recipes' rank.pairs derive from it).
PairStrategy = Literal["best-vs-worst", "pos-vs-neg", "all-pairs", "original", "chosen-vs-neg", "pos-vs-rejected"]
SIDES = ("chosen", "rejected")


class RankConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder holding scored/.")
    pairs: list[PairStrategy] = Field(
        ["best-vs-worst"],
        description="Pair strategies, comma-separated: the top and bottom of each list, every pos × neg response, every pair; over a "
        "dataset's answers: its original pairs, its chosen vs each neg answer, each pos answer vs its rejected.",
    )
    dataset_order: Literal["score", "keep"] = Field(
        "score",
        description="score: rank every candidate by score; keep: the dataset's answers keep its own order (source_rank) among "
        "the places the scores give them, generated answers placed by score around them.",
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

    @field_validator("pairs", mode="before")
    @classmethod
    def _one_or_several(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `pairs: best-vs-worst` in a recipe, as before

    @field_validator("pairs")
    @classmethod
    def _check_pairs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one pair strategy")
        if len(set(value)) < len(value):
            raise ValueError("names a pair strategy twice")
        return value

    @field_serializer("pairs")
    def _dump_pairs(self, value: list[str]) -> str | list[str]:
        return value[0] if len(value) == 1 else value  # one strategy reads back as before (manifests, stage keys)


@dataclass
class RankSummary:
    prompts: int
    candidates: int
    pairs_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    margins: dict[str, float] = field(default_factory=dict)
    truncated_left_out: int = 0  # candidates left out by drop_truncated
    length: dict[str, Any] = field(default_factory=dict)  # the kept pairs' length figures (stages/audit/measures.py)
    by_strategy: dict[str, int] = field(default_factory=dict)  # kept pairs per strategy
    dataset_candidates: int = 0  # the user's dataset's own answers among the candidates (steering "dataset")
    pairs_original: int = 0  # kept pairs with both sides from the dataset; the others have a generated side

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dropped.items())) or "none"
        gap = ", ".join(f"{k} {v:.3f}" for k, v in self.margins.items()) or "n/a"
        truncated = f", truncated candidates left out {self.truncated_left_out}" if self.truncated_left_out else ""
        lines = [
            f"prompts {self.prompts}, candidates {self.candidates}{truncated}, pairs kept {self.pairs_kept}, dropped: {dropped}",
            f"score gap of kept pairs: {gap}",
        ]
        if self.dataset_candidates or len(self.by_strategy) > 1:
            strategies = ", ".join(f"{name} {count}" for name, count in self.by_strategy.items()) or "none"
            lines.append(
                f"pairs by strategy: {strategies}; dataset answers among the candidates {self.dataset_candidates}, pairs with both "
                f"sides from the dataset {self.pairs_original}, with a generated side {self.pairs_kept - self.pairs_original}"
            )
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


def candidate_pairs(
    config: RankConfig, strategy: str, n: int, steering: list[str], source_rank: list[int | None]
) -> list[tuple[int, int, bool]]:
    """(chosen index, rejected index, labelled by score?) over a list sorted best first, for one strategy."""
    if n < 2:
        return []
    if strategy == "best-vs-worst":
        return [(0, n - 1, True)]
    if strategy == "all-pairs":
        return [(i, j, True) for i, j in combinations(range(n), 2)]
    positives = [i for i in range(n) if steering[i] == "pos"]
    negatives = [i for i in range(n) if steering[i] == "neg"]
    if strategy == "pos-vs-neg":
        if config.pos_vs_neg_by == "construction":
            return [(p, q, False) for p in positives for q in negatives]
        return [(min(p, q), max(p, q), True) for p in positives for q in negatives]  # lower index = higher score
    ranks = {i: rank for i, rank in enumerate(source_rank) if rank is not None}  # the dataset's ranked answers
    if not ranks:
        return []
    best, worst = min(ranks.values()), max(ranks.values())
    preferred = [i for i, rank in ranks.items() if rank == best]
    if strategy == "original":
        return [(c, r, False) for c in preferred for r, rank in ranks.items() if rank > best]
    if strategy == "chosen-vs-neg":
        return [(c, q, False) for c in preferred for q in negatives]
    least = [i for i, rank in ranks.items() if rank == worst > best]  # pos-vs-rejected
    return [(p, r, False) for p in positives for r in least]


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


def strategy_pairs(
    config: RankConfig, strategy: str, groups: Groups, steering: np.ndarray | None, source_rank: np.ndarray | None
) -> np.ndarray:
    """One strategy's candidate pairs over `groups`: rows (list row, chosen, rejected, labelled by score?) with the
    sides as flat positions, list by list, each list's pairs in `candidate_pairs` order. best-vs-worst, the
    default, in numpy; the others list by list through `candidate_pairs`."""
    if not len(groups.rows):
        return np.empty((0, 4), dtype=np.int64)
    starts, ends = groups.starts, groups.ends
    if strategy == "best-vs-worst":
        two = ends - starts >= 2
        return np.stack([groups.rows[two], groups.at(starts[two]), groups.at(ends[two] - 1), np.ones(int(two.sum()), np.int64)], 1)
    found = []
    for row, start, end in zip(groups.rows.tolist(), starts.tolist(), ends.tolist()):
        at = groups.at(np.arange(start, end)).tolist()
        found += [
            (row, at[c], at[r], int(by_score))
            for c, r, by_score in candidate_pairs(
                config,
                strategy,
                end - start,
                [] if steering is None else steering[at].tolist(),
                [] if source_rank is None else source_rank[at].tolist(),
            )
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
    steering = source_rank = None  # only the strategies that pair by source read them
    if set(config.pairs) - {"best-vs-worst", "all-pairs"}:
        steering = np.asarray(pc.list_flatten(lists.column("steering")).to_pylist(), dtype=object)
        source_rank = np.asarray(pc.list_flatten(lists.column("source_rank")).to_pylist(), dtype=object)
    groups, whole_lists = Groups.every_candidate(lengths), None
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
        whole_lists = Groups.some_candidates(owner[whole], whole)
        groups = Groups.some_candidates(owner[kept_positions], kept_positions)
    found, lost_found = [], []
    for number, strategy in enumerate(config.pairs):
        formed = strategy_pairs(config, strategy, groups, steering, source_rank)
        found.append(np.column_stack([formed, np.full(len(formed), number, np.int64)]))
        if whole_lists is not None and truncated is not None:
            lost = strategy_pairs(config, strategy, whole_lists, steering, source_rank)
            lost = lost[truncated[lost[:, 1]] | truncated[lost[:, 2]]]
            lost_found.append(np.column_stack([lost, np.full(len(lost), number, np.int64)]))
    pairs, lost = np.concatenate(found), np.concatenate(lost_found or [np.empty((0, 5), np.int64)])
    if len(config.pairs) > 1:
        pairs, lost = first_of_each(pairs), first_of_each(lost)
    strategies = np.array(config.pairs, dtype=object)
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
    dropped = np.concatenate([lost, pairs[~keep]])
    reasons = np.concatenate([np.full(len(lost), "truncated", dtype=object), reason[~keep]])
    order = np.argsort(np.concatenate([2 * lost[:, 0], 2 * pairs[~keep, 0] + 1]), kind="stable")  # by list; lost ones first
    dropped, kept = dropped[order], pairs[keep]
    return Pairing(
        _gather_pairs(lists, kept, strategies[kept[:, 4]].tolist(), [text.filter(pa.array(keep)) for text in texts]),
        _gather_dropped(lists, dropped[:, 0], dropped[:, 1], dropped[:, 2], reasons[order].tolist(), strategies[dropped[:, 4]].tolist()),
        gaps[keep],
        kept[:, 1],
        kept[:, 2],
    )


def first_of_each(pairs: np.ndarray) -> np.ndarray:
    """`pairs` (rows: list row, chosen, rejected, by score?, strategy number) less any pair of the same two candidates
    found before it (by an earlier strategy, either way round): a pair two strategies form is kept once."""
    if len(pairs) < 2:
        return pairs
    low, high = np.minimum(pairs[:, 1], pairs[:, 2]), np.maximum(pairs[:, 1], pairs[:, 2])
    first = np.unique(low * (int(high.max()) + 1) + high, return_index=True)[1]
    keep = np.zeros(len(pairs), dtype=bool)
    keep[first] = True
    return pairs[keep]


def _flat(lists: pa.Table, name: str) -> pa.Array:
    return pc.list_flatten(lists.column(name))


def _gather_pairs(lists: pa.Table, kept: np.ndarray, strategies: list[str], texts: list[pa.Array]) -> pa.Table:
    """The PAIRS table from `kept` (rows: list row, chosen, rejected, …); `texts`: the chosen and rejected responses,
    already gathered (by the degenerate check)."""
    if not len(kept):
        return PAIRS.empty_table()
    rows_index, chosen_index, rejected_index = (pa.array(kept[:, i]) for i in range(3))
    columns = [lists.column("prompt_id").take(rows_index), lists.column("prompt").take(rows_index), *texts]
    for name in ("scores", "steering", "keys", "finish_reason"):
        values = _flat(lists, name)
        columns += [values.take(chosen_index), values.take(rejected_index)]
    labels = _flat(lists, "source_label")
    columns += [pa.array(strategies, pa.string()), labels.take(chosen_index), labels.take(rejected_index)]
    return pa.Table.from_arrays(columns, schema=PAIRS)


def _gather_dropped(
    lists: pa.Table, rows: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, reasons: list[str], strategies: list[str]
) -> pa.Table:
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
            pa.array(strategies, pa.string()),
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
    keep_order = config.dataset_order == "keep"
    everything, source = ranked_lists(scored, keep_dataset_order=keep_order)
    tokens = one_array(scored.column("completion_tokens").take(source)) if "completion_tokens" in scored.column_names else None
    kept = ranked_lists(scored, drop_truncated=True, keep_dataset_order=keep_order)[0] if config.drop_truncated else everything
    return Ranked(kept, everything, tokens)


def rank_pairs(config: RankConfig, ranked: Ranked) -> tuple[pa.Table, pa.Table, RankSummary]:
    """(pairs, dropped pairs, summary) from the lists of `rank_lists`."""
    pairing = make_pairs(config, ranked.everything)
    lengths = pair_lengths(pairing.pairs, pairing.chosen, pairing.rejected, ranked.tokens) if pairing.pairs.num_rows else None
    if config.balance_length is not None and lengths is not None:
        kept, unbalanced = balance_lengths(pairing.pairs, lengths, config.balance_length)
        pairing, lengths = pairing.keep(kept, unbalanced), lengths.keep(kept)
    pairs = pairing.pairs
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
        by_strategy={name: count for name in config.pairs if (count := int(pc.sum(pc.equal(pairs.column("strategy"), name)).as_py() or 0))},
        dataset_candidates=int(pc.sum(pc.equal(pc.list_flatten(ranked.lists.column("steering")), "dataset")).as_py() or 0),
        pairs_original=int(pc.sum(pc.and_(*(pc.equal(pairs.column(f"steering_{side}"), "dataset") for side in SIDES))).as_py() or 0),
    )
    return pairing.pairs, pairing.dropped, summary


def rank_tables(config: RankConfig, scored: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table, RankSummary]:
    """The pure core: scored rows → (ranked lists, pairs, dropped pairs, summary)."""
    ranked = rank_lists(config, scored)
    return ranked.lists, *rank_pairs(config, ranked)


def run_rank(config: RankConfig, argv: list[str] | None = None) -> RankSummary:
    run_dir = Path(config.run)
    if not layout.SCORED.path(run_dir).is_dir():
        raise NeatError("no scored/ in this run folder (run `neat-data score` first)", file=run_dir)
    with RunLock(run_dir):
        # read (and checked) before anything is written: scores finished, and scored from the generations as they are now
        manifest = require_current(run_dir, layout.SCORED)
        scored = layout.SCORED.rows(run_dir).read(list(RANK_READS))
        check_columns(scored, pa.schema([SCORED.field(name) for name in RANK_READS]), str(layout.SCORED.path(run_dir)))
        reads = {layout.SCORED.name: check_read(run_dir, layout.SCORED, scored, manifest)}
        with StagedWrites() as writes:  # lists.parquet is written while the pairs are formed; all three land together
            ranked = rank_lists(config, scored)
            del scored  # the lists hold their own copies: the pairs and the writers reuse its memory
            writes.write(layout.RANKED_LISTS.path(run_dir), ranked.lists)
            pairs, dropped, summary = rank_pairs(config, ranked)
            writes.write(layout.RANKED_PAIRS.path(run_dir), pairs)
            writes.write(layout.RANKED_DROPPED.path(run_dir), dropped)
            written = ((layout.RANKED_LISTS, ranked.lists), (layout.RANKED_PAIRS, pairs), (layout.RANKED_DROPPED, dropped))
            wrote = {kind.name: table_digest(kind, table) for kind, table in written}
            manifest.set_stage(
                "rank",
                {
                    "config": config.model_dump(mode="json"),
                    "command": argv,
                    "finished": True,
                    "summary": summary.__dict__,
                    "reads": reads,
                    "wrote": wrote,
                },
            )
            writes.write_json(run_dir / MANIFEST, manifest_record(manifest))  # with the tables, after them
    return summary


def read_ranked(run_dir: Path, name: str) -> pa.Table:
    path = layout.RANKED_TABLES[name].path(run_dir)
    if not path.is_file():
        raise NeatError("not ranked yet (run `neat-data rank` first)", file=path)
    table = read_parquet(path)
    check_columns(table, RANKED_LISTS if name == "lists" else PAIRS, str(path))
    return table


def rank_result(config: RankConfig, argv: list[str] | None) -> StageResult:
    return StageResult(run_rank(config, argv=argv).lines(), read_manifest(Path(config.run)).record("rank", RankRecord))


RANK = Stage(
    "rank",
    RankConfig,
    rank_result,
    reads=lambda c: [layout.SCORED.path(c.run)],
    writes=lambda c: [layout.RANKED.path(c.run)],
    record=RankRecord,
    recipe_section="rank",
    manifest_entries=lambda c: ["rank"],
)
