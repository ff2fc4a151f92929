"""Merge stage: the shards of a `--num-shards` run → one table in the normal layout, after checks.

In:  `<run>/generations/shard-*/` and/or `<run>/scored/shard-*/` and the shard records in `manifest.json`.
Out: `<run>/generations/part-*.parquet` / `<run>/scored/part-*.parquet` (shard folders removed) and the
     stage's manifest entry marked `finished` and `merged`, as if one process had written the table.
Run: `neat-data merge RUN` (both stages, whichever are sharded) or `--stage generate|score`.

Checks, each a NeatError (one line, exit code 2) that leaves the folder untouched:
- every shard 0..N-1 recorded as finished in the manifest (missing / unfinished → says which and how to rerun);
- no shard folder from another split (leftovers of an earlier `--num-shards`);
- every row sits in the shard that owns its prompt, and no key appears in two shards;
- scored: generate finished, and every generation row has a score of its current text (scored shards cover the
  generations, none scored a row that `--retry-errors` / `--redo` generated again since).
The merged stage records the digests of what it wrote (and, for score, of the generations it scored): core/lineage.py.
For score, `negative_score = floor` is applied here over the whole run (one shard cannot know the floor).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.lineage import require_current, table_digest
from neat_data.core.manifest import MANIFEST, StageRecord, read_manifest, update_manifest
from neat_data.core.runfolder import SHARD_DIR, RunLock, ShardedTable, count_by
from neat_data.core.shards import ShardSpec, shard_of


@dataclass
class MergeResult:
    stage: str
    rows: int
    shards: int
    counts: dict[str, dict[str, int]]
    already_merged: bool = False

    def line(self, run_dir: Path) -> str:
        if self.already_merged:
            return f"{run_dir}/{layout.SHARDED[self.stage].name}: already merged ({self.rows} rows)"
        return f"{run_dir}/{layout.SHARDED[self.stage].name}: merged {self.shards} shards → {self.rows} rows {self.counts}"


def run_merge(run_dir: Path, stages: list[str] | None = None) -> list[MergeResult]:
    """Merge the named stages (default: every sharded stage of the run); refuse if nothing is sharded."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    if not manifest_path.is_file():
        raise NeatError("no manifest.json: not a run folder", file=run_dir)
    with RunLock(run_dir):  # refuses while any shard process still holds its lock
        manifest = read_manifest(run_dir)
        wanted = [stage for stage in layout.SHARDED if (stage in stages if stages else manifest.stage(stage).shards)]
        if not wanted:
            raise NeatError("nothing to merge: no stage of this run was run with --num-shards", file=manifest_path)
        results = []
        for stage in wanted:  # generate before score: scored rows are checked against merged generations
            results.append(_merge_stage(run_dir, stage, manifest.stage(stage)))
    return results


def _merge_stage(run_dir: Path, stage: str, recorded: StageRecord) -> MergeResult:
    started = time.time()
    table_kind = layout.SHARDED[stage]
    folder, schema = table_kind.path(run_dir), table_kind.schema
    shards, entry = recorded.shards, recorded.entry()
    if not shards:
        raise NeatError(f"stage {stage} was not run with --num-shards", file=run_dir / MANIFEST, field=stage)
    num_shards = shards["num_shards"]
    specs = [ShardSpec(num_shards, index) for index in range(num_shards)]
    if recorded.merged and not _shard_folders(folder):
        rows = ShardedTable(folder, schema).read().num_rows
        return MergeResult(stage, rows, num_shards, {}, already_merged=True)
    command = "generate" if stage == "generate" else "score"
    for spec in specs:
        record = shards.get("done", {}).get(str(spec.index))
        if not record or not record.get("finished"):
            state = "was never started" if not record else "has not finished"
            raise NeatError(
                f"{spec.name} {state}; run `neat-data {command} … --num-shards {num_shards} --shard-index {spec.index}` "
                "to complete it, then merge again (nothing was merged)",
                file=folder / spec.name,
                field="shards",
            )
    expected = {spec.name for spec in specs}
    stray = sorted(path.name for path in _shard_folders(folder) if path.name not in expected)
    if stray:
        raise NeatError(
            f"shard folder from another split (this run has {num_shards} shards); move it away or rerun that split", file=folder / stray[0]
        )
    _check_shard_rows(folder, schema, specs)
    table = ShardedTable(folder, schema)
    merged = table.read()
    if stage == "score":
        merged, entry["reads"] = _finish_scores(run_dir, merged, recorded)
    table.rewrite(merged)
    counts = {name: count_by(merged, name) for name in (("status", "steering") if stage == "generate" else ("score_status", "steering"))}
    entry.update(finished=True, merged=True, rows=merged.num_rows, counts=counts, merge_seconds=round(time.time() - started, 2))
    entry["wrote"] = {table_kind.name: table_digest(table_kind, merged)}  # what the next stage checks it reads (core/lineage.py)
    update_manifest(run_dir, stage, entry)
    return MergeResult(stage, merged.num_rows, num_shards, counts)


def _shard_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and SHARD_DIR.match(p.name)) if folder.is_dir() else []


def _check_shard_rows(folder: Path, schema: pa.Schema, specs: list[ShardSpec]) -> None:
    """Each shard's rows belong to its prompts, and no key is in two shards (the hash makes both true
    unless a folder was copied or edited by hand)."""
    owner: dict[str, str] = {}
    for spec in specs:
        rows = ShardedTable(folder / spec.name, schema).read().select(["key", "prompt_id"]).to_pylist()
        for row_number, row in enumerate(rows):
            if row["key"] in owner:
                raise NeatError(
                    f"key {row['key']} is also in {owner[row['key']]} (copied by hand?)",
                    file=folder / spec.name,
                    row=row_number,
                    field="key",
                )
            owner[row["key"]] = spec.name
            if shard_of(row["prompt_id"], spec.num_shards) != spec.index:
                raise NeatError(
                    f"prompt {row['prompt_id']} belongs to shard {shard_of(row['prompt_id'], spec.num_shards)}, "
                    f"not {spec.index} (copied or edited by hand?)",
                    file=folder / spec.name,
                    row=row_number,
                    field="prompt_id",
                )


def _finish_scores(run_dir: Path, scored: pa.Table, recorded: StageRecord) -> tuple[pa.Table, dict[str, str]]:
    """Every generation row scored as it is now, then negative_score applied over the whole run (as run_score does);
    returns the table and the digest of the generations it scored (the merged stage's `reads`)."""
    from neat_data.stages.score import apply_negative_score

    generations_dir = layout.GENERATIONS.path(run_dir)
    if _shard_folders(generations_dir):
        raise NeatError("generations are still in shards; merge them first (`neat-data merge RUN`)", file=generations_dir)
    require_current(run_dir, layout.GENERATIONS)
    generations = layout.GENERATIONS.rows(run_dir).read()
    keys = set(generations.column("key").to_pylist())
    missing = keys - set(scored.column("key").to_pylist())
    # a score shard that ran before `generate --retry-errors` / `--redo` scored another version of some rows
    compared = ["key", "status", "response", "settings_hash"]
    now = set(zip(*(generations.column(name).to_pylist() for name in compared)))
    other = sum(row not in now for row in zip(*(scored.column(name).to_pylist() for name in compared)) if row[0] in keys)
    if missing or other:
        what = f"{len(missing)} of {len(keys)} generation rows have no score" if missing else f"{other} scored rows scored an older text"
        raise NeatError(
            f"{what} (generated after scoring?); rerun every score shard, then merge again",
            file=layout.SCORED.path(run_dir),
            field="key",
        )
    final = apply_negative_score(scored, recorded.config.get("negative_score", "scored"))
    return final, {layout.GENERATIONS.name: table_digest(layout.GENERATIONS, generations)}
