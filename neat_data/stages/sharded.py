"""Generate and score one shard of a run (`--num-shards N --shard-index i`); `neat-data merge` joins them.

In:  the same configs as the single-process stages (GenerateConfig, ScoreConfig) plus a ShardSpec.
Out: `<run>/generations/shard-…/part-*.parquet` or `<run>/scored/shard-…/part-*.parquet` with exactly the
     rows (schema, content keys, seeds) the single-process stage writes for this shard's prompts, and the
     shard's record in the manifest (neat_data.shards.ShardRun).
Run: `neat-data generate … --num-shards 4 --shard-index 2` (and score the same way), then `neat-data merge RUN`.

Rows already in the run (merged or in any shard's folder) count as done, so a killed shard resumes like
the single-process stage. The score shard leaves `negative_score = floor` to merge: the floor is a
constant below every response of the whole run, which one shard cannot know.
"""

from __future__ import annotations

import time
from pathlib import Path

from neat_data.engines.base import Backend
from neat_data.errors import NeatError
from neat_data.pairs import load_libraries
from neat_data.prompts_in import load_prompts
from neat_data.runfolder import ShardedTable, count_by, read_manifest
from neat_data.schemas import GENERATIONS, SCORED, check_columns
from neat_data.shards import ShardRun, ShardSpec, refuse_while_writing
from neat_data.stages.generate import (GenerateConfig, GenerateSummary, _generate_pending, check_run_identity,
                                       package_versions, plan_requests)
from neat_data.stages.score import ScoreConfig, ScoreSummary, check_identity, pair_texts, prompt_aligned_chunks, score_rows

_NO_OVERWRITE = "--overwrite cannot be combined with --num-shards (the other shards share the folder); delete the run folder or use another --out"


def run_generate_shard(config: GenerateConfig, spec: ShardSpec, *, backend: Backend | None = None, retry_errors: bool = False,
                       overwrite: bool = False, progress: bool = True, argv: list[str] | None = None) -> GenerateSummary:
    """Generate every missing row of this shard's prompts into its own sub-table; returns this shard's counts."""
    if overwrite:
        raise NeatError(_NO_OVERWRITE, field="overwrite")
    started = time.time()
    run_dir = Path(config.out)
    loaded = load_prompts(config.prompts, prompt_column=config.prompt_column, limit=config.limit)
    libraries = load_libraries(config.pairs)
    records = [record for record in loaded.records if spec.owns(record.prompt_id)]
    with ShardRun(run_dir, "generate", "generations", spec) as shard:
        shard.start({
            "config": config.model_dump(mode="json"), "command": argv, "versions": package_versions(),
            "prompts": {"source": loaded.source, "count": len(loaded.records), "duplicates_dropped": loaded.duplicates_dropped},
            "pair_libraries": [{"name": lib.name, "path": str(lib.path), "pairs": len(lib.pairs), "sha256_16": lib.content_hash}
                               for lib in libraries],
        }, lambda: check_run_identity(config, run_dir))
        existing = ShardedTable(run_dir / "generations", GENERATIONS).read()  # merged rows and every shard's
        done = {key for key, status in zip(existing.column("key").to_pylist(), existing.column("status").to_pylist())
                if status == "ok" or not retry_errors}
        planned = plan_requests(config, records, libraries)
        all_keys = {key for request in planned for key in request.keys}
        pending = [request for request in planned if any(key not in done for key in request.keys)]
        table = ShardedTable(shard.folder, GENERATIONS)
        generated = _generate_pending(config, pending, done, all_keys, table, backend, progress) if pending else 0
        table.compact()
        mine = table.read()
        counts = {"status": count_by(mine, "status"), "steering": count_by(mine, "steering")}
        shard.finish({"rows": mine.num_rows, "prompts": len(records), "planned_rows": len(all_keys), "generated_rows": generated,
                      "counts": counts, "command": argv, "seconds": round(time.time() - started, 2)})
    return GenerateSummary(run_dir=run_dir, total_rows=mine.num_rows, generated_rows=generated, counts=counts,
                           seconds=time.time() - started)


def run_score_shard(config: ScoreConfig, spec: ShardSpec, *, scorer=None, overwrite: bool = False, progress: bool = True,
                    argv: list[str] | None = None) -> ScoreSummary:
    """Score this shard's generation rows (all of them: merged or still in generation shards) into its sub-table."""
    from tqdm.auto import tqdm

    from neat_data.scorers import make_scorer

    if overwrite:
        raise NeatError(_NO_OVERWRITE, field="overwrite")
    started = time.time()
    run_dir = Path(config.run)
    generations_dir = run_dir / "generations"
    if not generations_dir.is_dir():
        raise NeatError("no generations/ in this run folder (run `neat-data generate` first)", file=run_dir)
    refuse_while_writing(run_dir, "generations")
    with ShardRun(run_dir, "score", "scored", spec) as shard:
        shard.start({"config": config.model_dump(mode="json"), "command": argv}, lambda: check_identity(config, run_dir))
        generations = ShardedTable(generations_dir, GENERATIONS).read()
        check_columns(generations, GENERATIONS, str(generations_dir))
        rows = [row for row in generations.to_pylist() if spec.owns(row["prompt_id"])]
        done = set(ShardedTable(run_dir / "scored", SCORED).read().column("key").to_pylist())
        pending = [row for row in rows if row["key"] not in done]
        table = ShardedTable(shard.folder, SCORED)
        if pending:
            generate_entry = read_manifest(run_dir).get("stages", {}).get("generate", {})
            texts = pair_texts(rows, generate_entry)
            if scorer is None:
                scorer = make_scorer(config, generate_entry.get("config", {}).get("model"))
            bar = tqdm(total=len(rows), initial=len(rows) - len(pending), unit="row", desc=f"score {spec.name}", disable=not progress)
            for chunk in prompt_aligned_chunks(pending, config.flush_every):
                table.append(score_rows(chunk, scorer, texts))
                bar.update(len(chunk))
            bar.close()
        table.compact()
        mine = table.read()
        counts = {"score_status": count_by(mine, "score_status"), "steering": count_by(mine, "steering")}
        shard.finish({"rows": mine.num_rows, "scored_rows": len(pending), "counts": counts, "command": argv,
                      "seconds": round(time.time() - started, 2)})
    return ScoreSummary(run_dir=run_dir, rows=mine.num_rows, scored_rows=len(pending), counts=counts, seconds=time.time() - started)
