"""Fixed training data: prompts from a source, each paired with one given response, as the trainer's `ranked` input.

In:  a prompts source (e.g. `data://strongreject`), the response (e.g. a refusal), the held-out prompts and the
     evaluation suites to keep out of training.
Out: `<out>/export/ranked/train.parquet` (the `ranked` export's columns: one candidate per prompt, score 0, steering
     `pos`, finish reason `stop`) and the `fixed` entry of `<out>/manifest.json` (counts, prompts left out).
Run: a recipe's `fixed_data:` section (`pipelines/control.yaml`: the positive control — harmful prompts answered with
     a refusal, trained with the LM term only — shows that the safety evaluation sees an effect when there is one).

A training prompt that shares an 8-gram (after normalisation) with a held-out or suite prompt is left out and
counted, as in the rounds' own split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.manifest import PlainRecord, read_manifest, update_manifest
from neat_data.core.prompts_in import load_prompts
from neat_data.core.runfolder import RunLock, atomic_write_table
from neat_data.core.stage import Stage, StageResult
from neat_data.stages.export import features


class FixedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="Round folder: the data goes to <out>/export/ranked/train.parquet.")
    source: str = Field(description="Prompts (any prompts source).")
    response: str = Field(min_length=1, description="The response every prompt is paired with.")
    prompt_column: str | None = None
    limit: int | None = Field(None, ge=1, description="The first N prompts kept.")
    exclude: Path | None = Field(None, description="A prompts file (the held-out prompts) never trained on.")
    suites: list[str] = Field(default_factory=list, description="Evaluation suites whose prompts are never trained on.")
    seed: int = 0


def run_fixed(config: FixedConfig, argv: list[str] | None = None) -> tuple[int, int]:
    """Write the fixed pairs; returns (prompts written, prompts left out by decontamination)."""
    from neat_data.safety.decontaminate import decontaminate, record_text
    from neat_data.safety.suites import load_suites, suite_texts

    records = load_prompts(config.source, prompt_column=config.prompt_column).records
    held = load_prompts(config.exclude).records if config.exclude is not None and Path(config.exclude).is_file() else []
    held_ids = {record.prompt_id for record in held}
    records = [record for record in records if record.prompt_id not in held_ids]
    suites = [suite for suite in load_suites(config.suites) if suite.source != "heldout"]
    result = decontaminate(records, suite_texts(suites) + [record_text(record) for record in held])
    kept = list(result.kept)[: config.limit]
    if not kept:
        raise NeatError("no training prompt left after leaving out the evaluation's prompts", file=config.source, field="fixed_data")
    schema = features("ranked").arrow_schema
    table = pa.Table.from_pylist(
        [
            {
                "prompt": record.messages,
                "prompt_id": record.prompt_id,
                "responses": [config.response],
                "scores": [0.0],
                "steering": ["pos"],
                "finish_reason": ["stop"],
            }
            for record in kept
        ],
        schema=schema,
    )
    out = Path(config.out)
    with RunLock(out):
        atomic_write_table(layout.RANKED_EXPORT.path(out), table)
        update_manifest(
            out,
            "fixed",
            {
                "config": json.loads(config.model_dump_json()),
                "command": argv,
                "rows": table.num_rows,
                "decontaminated": result.dropped_count,
                "finished": True,
            },
        )
    return table.num_rows, result.dropped_count


def fixed_result(config: FixedConfig, argv: list[str] | None) -> StageResult:
    rows, dropped = run_fixed(config, argv=argv)
    left_out = f" ({dropped} left out: they share an 8-gram with an evaluation prompt)" if dropped else ""
    return StageResult([f"fixed data: {rows} prompts{left_out}"], read_manifest(Path(config.out)).record("fixed", PlainRecord))


FIXED = Stage(
    "fixed",
    FixedConfig,
    fixed_result,
    reads=lambda c: [],
    writes=lambda c: [layout.export(c.out, "ranked")],
    record=PlainRecord,
    recipe_section="fixed_data",
    manifest_entries=lambda c: ["fixed"],
)
