"""Rank stage (pure, no engine): scored rows → one ranked list per prompt + preference pairs.

In:  `<run>/scored/` (schema SCORED). Out: `<run>/ranked/lists.parquet` (RANKED_LISTS: candidates best
first) and `<run>/ranked/pairs.parquet` (PAIRS), plus the `rank` entry of the manifest.
Run: `neat-data rank runs/demo --pairs best-vs-worst --min-margin 0.1`.

Candidates are the rows with `score_status = ok`. Pair strategies:
- `best-vs-worst`: the top and the bottom of each list;
- `pos-vs-neg`: every positive-prompt × negative-prompt response; `--pos-vs-neg-by construction` (RLCD:
  the positive one is chosen, whatever the scores) or `score` (the higher score is chosen);
- `all-pairs`: every pair of the list, higher score chosen.
A pair is dropped, and counted by reason, when both texts are the same after whitespace normalisation
(`degenerate`: no signal), when the scores tie (`tie`), or when the gap is below `min_margin` (`margin`;
score-labelled strategies only).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from neat_data.errors import NeatError
from neat_data.runfolder import RunLock, ShardedTable, atomic_write_table, update_manifest
from neat_data.schemas import PAIRS, RANKED_LISTS, SCORED, check_columns


class RankConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder holding scored/.")
    pairs: Literal["best-vs-worst", "pos-vs-neg", "all-pairs"] = Field("best-vs-worst", description="Pair strategy.")
    pos_vs_neg_by: Literal["construction", "score"] = Field("construction", description="pos-vs-neg: label by steering or by score.")
    min_margin: float = Field(0.0, ge=0.0, description="Drop score-labelled pairs whose score gap is smaller.")


@dataclass
class RankSummary:
    prompts: int
    candidates: int
    pairs_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    margins: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dropped.items())) or "none"
        gap = ", ".join(f"{k} {v:.3f}" for k, v in self.margins.items()) or "n/a"
        return [f"prompts {self.prompts}, candidates {self.candidates}, pairs kept {self.pairs_kept}, dropped: {dropped}",
                f"score gap of kept pairs: {gap}"]


def normalise(text: str) -> str:
    return " ".join(text.split())


def ranked_lists(scored: pa.Table) -> pa.Table:
    """One row per prompt: ok candidates sorted by score (best first; ties by key, for a stable order)."""
    ok = scored.filter(pc.equal(scored.column("score_status"), "ok"))
    ok = ok.sort_by([("prompt_id", "ascending"), ("score", "descending"), ("key", "ascending")])
    ids = ok.column("prompt_id").to_pylist()
    columns = {name: ok.column(name).to_pylist() for name in ("prompt", "response", "score", "steering", "key")}
    rows, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or ids[end] != ids[start]:
            rows.append({"prompt_id": ids[start], "prompt": columns["prompt"][start], "responses": columns["response"][start:end],
                         "scores": columns["score"][start:end], "steering": columns["steering"][start:end],
                         "keys": columns["key"][start:end]})
            start = end
    return pa.Table.from_pylist(rows, schema=RANKED_LISTS)


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


def make_pairs(config: RankConfig, lists: pa.Table) -> tuple[pa.Table, Counter[str], list[float]]:
    rows, dropped, margins = [], Counter(), []
    for item in lists.to_pylist():
        responses, scores, steering, keys = item["responses"], item["scores"], item["steering"], item["keys"]
        for chosen, rejected, by_score in candidate_pairs(config, len(responses), steering):
            gap = scores[chosen] - scores[rejected]
            if normalise(responses[chosen]) == normalise(responses[rejected]):
                dropped["degenerate"] += 1
            elif by_score and gap == 0:
                dropped["tie"] += 1
            elif by_score and gap < config.min_margin:
                dropped["margin"] += 1
            else:
                margins.append(gap)
                rows.append({"prompt_id": item["prompt_id"], "prompt": item["prompt"], "chosen": responses[chosen],
                             "rejected": responses[rejected], "score_chosen": scores[chosen], "score_rejected": scores[rejected],
                             "steering_chosen": steering[chosen], "steering_rejected": steering[rejected],
                             "key_chosen": keys[chosen], "key_rejected": keys[rejected]})
    return pa.Table.from_pylist(rows, schema=PAIRS), dropped, margins


def rank_tables(config: RankConfig, scored: pa.Table) -> tuple[pa.Table, pa.Table, RankSummary]:
    """The pure core: scored rows → (ranked lists, pairs, summary)."""
    lists = ranked_lists(scored)
    pairs, dropped, margins = make_pairs(config, lists)
    stats = {}
    if margins:
        stats = {"mean": statistics.fmean(margins), "median": statistics.median(margins), "min": min(margins), "max": max(margins)}
    summary = RankSummary(prompts=lists.num_rows, candidates=sum(len(r) for r in lists.column("responses").to_pylist()),
                          pairs_kept=pairs.num_rows, dropped=dict(dropped), margins=stats)
    return lists, pairs, summary


def run_rank(config: RankConfig, argv: list[str] | None = None) -> RankSummary:
    run_dir = Path(config.run)
    if not (run_dir / "scored").is_dir():
        raise NeatError("no scored/ in this run folder (run `neat-data score` first)", file=run_dir)
    with RunLock(run_dir):
        scored = ShardedTable(run_dir / "scored", SCORED).read()
        check_columns(scored, SCORED, str(run_dir / "scored"))
        lists, pairs, summary = rank_tables(config, scored)
        atomic_write_table(run_dir / "ranked" / "lists.parquet", lists)
        atomic_write_table(run_dir / "ranked" / "pairs.parquet", pairs)
        update_manifest(run_dir, "rank", {"config": config.model_dump(mode="json"), "command": argv, "finished": True,
                                          "summary": summary.__dict__})
    return summary


def read_ranked(run_dir: Path, name: str) -> pa.Table:
    import pyarrow.parquet as pq

    path = Path(run_dir) / "ranked" / f"{name}.parquet"
    if not path.is_file():
        raise NeatError("not ranked yet (run `neat-data rank` first)", file=path)
    return pq.read_table(path)


