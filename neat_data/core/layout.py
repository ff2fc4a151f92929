"""The run folder's layout: every table and file a stage writes under a run (or round) folder, named once.

    layout.SCORED.path(run_dir)           → <run>/scored/                 (parts; shards in shard-*-of-*/)
    layout.RANKED_PAIRS.path(run_dir)     → <run>/ranked/pairs.parquet
    layout.export(run_dir, "trl")         → <run>/export/trl/             (each export format its own folder)

A table's `name` is its path without the suffix and its key in a manifest's `reads`/`wrote` (core/lineage.py: `stage`,
`columns`, `noun`, `upstream`). No other module spells a run folder's path: tests/test_architecture.py greps for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from neat_data.core import schemas
from neat_data.core.runfolder import ShardedTable


@dataclass(frozen=True)
class Table:
    name: str  # its path under the folder, without `suffix`
    suffix: str = ""  # ".parquet" for a one-file table; "" for a folder (a table of parts, or files)
    schema: pa.Schema | None = None
    stage: str = ""  # the manifest entry of the stage that writes it
    columns: tuple[str, ...] = ()  # what its lineage digest covers
    noun: str = ""  # how a line names its content
    upstream: tuple[Table, ...] = ()  # the tables its stage reads

    @property
    def file(self) -> str:
        return f"{self.name}{self.suffix}"

    def path(self, folder: Path | str) -> Path:
        return Path(folder) / self.file

    def rows(self, folder: Path | str) -> ShardedTable:
        """A table of parts (every shard's too), read by key."""
        return ShardedTable(self.path(folder), self.schema)


# a row's identity and what score reads of it; settings_hash changes with --redo even for the same text
GENERATIONS = Table("generations", "", schemas.GENERATIONS, "generate", ("key", "status", "response", "settings_hash"), "generations")
# what rank and export read of a scored row (the response: rank copies it into the lists and pairs)
SCORED = Table("scored", "", schemas.SCORED, "score", ("key", "response", "score_status", "score"), "scores", (GENERATIONS,))
RANKED = Table("ranked")
RANKED_LISTS = Table("ranked/lists", ".parquet", schemas.RANKED_LISTS, "rank", ("prompt_id", "keys", "scores"), "ranked lists", (SCORED,))
PAIR_KEYS = ("key_chosen", "key_rejected")
RANKED_PAIRS = Table(
    "ranked/pairs", ".parquet", schemas.PAIRS, "rank", (*PAIR_KEYS, "score_chosen", "score_rejected"), "ranked pairs", (SCORED,)
)
RANKED_DROPPED = Table("ranked/dropped", ".parquet", schemas.DROPPED_PAIRS, "rank", (*PAIR_KEYS, "reason"), "dropped pairs", (SCORED,))
RANKED_TABLES = {"lists": RANKED_LISTS, "pairs": RANKED_PAIRS, "dropped": RANKED_DROPPED}  # by rank's own names
LINEAGE = {table.name: table for table in (GENERATIONS, SCORED, RANKED_LISTS, RANKED_PAIRS, RANKED_DROPPED)}
SHARDED = {table.stage: table for table in (GENERATIONS, SCORED)}  # the stages that run with --num-shards: their table

EXPORTS = Table("export")  # one folder per format: export(folder, fmt)
RANKED_EXPORT = Table("export/ranked/train", ".parquet")  # what the trainer reads: the ranked export's train split
AUDIT = Table("audit")  # the data audit (neat_data.stages.audit): audit.json, audit.md, audit.png
AUDIT_JSON, AUDIT_MD, AUDIT_PNG = (Table("audit/audit", suffix) for suffix in (".json", ".md", ".png"))
REPORT = Table("report")  # `neat-data report`'s figures and summary
BATCHES = Table("batches")  # a batch backend's state, one folder per stage
MODEL = Table("model")  # a round's trained policy (an HF folder)
TRAIN_RECORD = Table("neat_train", ".json")  # inside the trained model's folder: the config and the summary
EVAL, EVAL_RESEEDED = Table("eval"), Table("eval-reseeded")  # a round's evaluation; the base model's negative control
# inside an evaluation folder (a run folder of its own: generations/, scored/)
EVAL_METRICS, EVAL_SUITES, EVAL_PROMPTS = Table("metrics", ".json"), Table("suites"), Table("prompts", ".jsonl")
HELDOUT = Table("prompts/heldout", ".jsonl")  # the recipe's split: held-out prompts, then one file per round


def round_folder(run_dir: Path | str, k: int) -> Path:
    return Path(run_dir) / f"round_{k:02d}"


def export(folder: Path | str, fmt: str) -> Path:
    return EXPORTS.path(folder) / fmt


def round_prompts(run_dir: Path | str, k: int) -> Path:
    return HELDOUT.path(run_dir).with_name(f"round_{k:02d}.jsonl")


def ranked_input(source: Path) -> Path:
    """What the trainer reads: a ranked Parquet file as given, an export folder's train split, or a run folder's export."""
    split = source / "train.parquet"
    return source if source.is_file() else split if split.is_file() else RANKED_EXPORT.path(source)
