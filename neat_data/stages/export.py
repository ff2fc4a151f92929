"""Export stage: ranked lists / pairs / scored rows → datasets any trainer reads (columns per FORMATS.md).

Formats:
- `trl`           prompt (messages up to the last user turn), chosen / rejected (one assistant message each)
- `trl-implicit`  chosen / rejected as whole conversations (RewardTrainer)
- `kto`           prompt, completion (one assistant message), label (bool): by steering (pos → True, neg →
                  False; unsteered rows left out) or by score (`score >= kto_threshold`)
- `ranked`        prompt, prompt_id, responses, finish_reason, scores, steering: the NEAT trainer's input
                  (RRHF-compatible; finish_reason per candidate: the trainer ends only finished ones with the
                  end-of-turn token; lists ranked before it travelled export it as nulls = finished)
- `h4`            prompt (text of the last user turn), prompt_id, chosen, rejected (full conversations),
                  messages (= chosen), score_chosen, score_rejected (HuggingFaceH4/ultrafeedback_binarized)
Each is written as `<out>/<split>.parquet` and as a `datasets` folder `<out>/hf/` (save_to_disk), both with
explicit Features, so `load_dataset("parquet", …)` and `load_from_disk` read them back unchanged; `<out>/croissant.json`
(Croissant 1.0 + RAI + PROV, stages/provenance.py) describes the split files, their sha256 and how they were made.
Run: `neat-data export runs/demo --format trl` (default out: `<run>/export/<format>`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neat_data.errors import NeatError
from neat_data.runfolder import RunLock, ShardedTable, atomic_write_table, update_manifest
from neat_data.schemas import SCORED
from neat_data.stages.rank import read_ranked

# The one list of export formats (the CLI's --format choices, recipes' `exports`, push's --format derive from it).
# A new format: a name here, its Features in `features`, its columns in `export_table`, a test.
ExportFormat = Literal["trl", "trl-implicit", "kto", "ranked", "h4"]


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder (ranked/ for pair and list formats, scored/ for kto).")
    format: ExportFormat = Field("trl", description="trl | trl-implicit (RewardTrainer) | kto | ranked (the NEAT trainer's input) | h4.")
    out: Path | None = Field(None, description="Output folder (default <run>/export/<format>).")
    split: str = Field("train", pattern=r"^[A-Za-z0-9_.-]+$", description="Split name (e.g. train, train_prefs).")
    kto_label: Literal["steering", "score"] = Field("steering", description="kto: label by steering (pos → True, neg → False) or by score.")
    kto_threshold: float | None = Field(None, description="kto with kto_label=score: score >= threshold → True.")

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        if self.format == "kto" and self.kto_label == "score" and self.kto_threshold is None:
            raise ValueError("kto_label=score needs kto_threshold")
        return self

    def out_dir(self) -> Path:
        return self.out or Path(self.run) / "export" / self.format


def features(fmt: ExportFormat) -> Any:
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    messages = List(message)
    return Features(
        {
            "trl": {"prompt": messages, "chosen": messages, "rejected": messages},
            "trl-implicit": {"chosen": messages, "rejected": messages},
            "kto": {"prompt": messages, "completion": messages, "label": Value("bool")},
            "ranked": {
                "prompt": messages,
                "prompt_id": Value("string"),
                "responses": List(Value("string")),
                "finish_reason": List(Value("string")),
                "scores": List(Value("float64")),
                "steering": List(Value("string")),
            },
            "h4": {
                "prompt": Value("string"),
                "prompt_id": Value("string"),
                "chosen": messages,
                "rejected": messages,
                "messages": messages,
                "score_chosen": Value("float64"),
                "score_rejected": Value("float64"),
            },
        }[fmt]
    )


def assistant_turns(texts: pa.ChunkedArray | pa.Array) -> pa.ListArray:
    """Each text as a one-message list [{"role": "assistant", "content": text}] (Arrow, no Python rows)."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    messages = pa.StructArray.from_arrays([pa.array(["assistant"] * len(texts), pa.string()), texts], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(len(texts) + 1, dtype=np.int32)), messages)


def append_turn(prompts: pa.ChunkedArray, texts: pa.ChunkedArray) -> pa.ListArray:
    """prompt messages + [assistant text], per row, by index arithmetic on the flattened messages."""
    prompts = prompts.combine_chunks()
    lengths = pc.list_value_length(prompts).to_numpy(zero_copy_only=False).astype(np.int64)
    old_values = pc.list_flatten(prompts)
    new_offsets = np.concatenate([[0], np.cumsum(lengths + 1)])
    take = np.empty(new_offsets[-1], dtype=np.int64)
    old_offsets = np.concatenate([[0], np.cumsum(lengths)])
    for_prompt = np.ones(new_offsets[-1], dtype=bool)
    for_prompt[new_offsets[1:] - 1] = False
    take[for_prompt] = np.arange(old_offsets[-1])
    take[~for_prompt] = old_offsets[-1] + np.arange(len(lengths))
    turns = pc.list_flatten(assistant_turns(texts))
    values = pa.concat_arrays([old_values.cast(turns.type), turns]).take(pa.array(take))
    return pa.ListArray.from_arrays(pa.array(new_offsets.astype(np.int32)), values)


def export_table(config: ExportConfig) -> pa.Table:
    """The chosen format as an Arrow table with the exact export schema (pure given the run's tables)."""
    fmt = config.format
    schema = features(fmt).arrow_schema
    if fmt == "kto":
        scored = ShardedTable(Path(config.run) / "scored", SCORED).read()
        if config.kto_label == "steering":
            keep = pc.and_(pc.equal(scored.column("status"), "ok"), pc.not_equal(scored.column("steering"), "none"))
            rows = scored.filter(keep)
            label = pc.equal(rows.column("steering"), "pos")
        else:
            rows = scored.filter(pc.equal(scored.column("score_status"), "ok"))
            label = pc.greater_equal(rows.column("score"), config.kto_threshold)
        return pa.Table.from_arrays([rows.column("prompt"), assistant_turns(rows.column("response")), label], schema=schema)
    if fmt == "ranked":
        lists = read_ranked(config.run, "lists")
        if "finish_reason" not in lists.column_names:  # ranked before finish reasons travelled: unknown = finished
            lengths = pc.list_value_length(lists.column("responses")).to_numpy(zero_copy_only=False).astype(np.int64)
            nulls = pa.nulls(int(lengths.sum()), pa.string())
            lists = lists.append_column(
                "finish_reason", pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)), nulls)
            )
        return lists.select(list(schema.names)).cast(schema)
    pairs = read_ranked(config.run, "pairs")
    if fmt == "trl":
        columns = [pairs.column("prompt"), assistant_turns(pairs.column("chosen")), assistant_turns(pairs.column("rejected"))]
    elif fmt == "trl-implicit":
        columns = [
            append_turn(pairs.column("prompt"), pairs.column("chosen")),
            append_turn(pairs.column("prompt"), pairs.column("rejected")),
        ]
    else:  # h4
        prompts = pairs.column("prompt").combine_chunks()
        ends = np.cumsum(pc.list_value_length(prompts).to_numpy(zero_copy_only=False)) - 1  # each prompt's last turn
        last = pc.list_flatten(prompts).take(pa.array(ends.astype(np.int64)))
        chosen = append_turn(pairs.column("prompt"), pairs.column("chosen"))
        columns = [
            pc.struct_field(last, "content"),
            pairs.column("prompt_id"),
            chosen,
            append_turn(pairs.column("prompt"), pairs.column("rejected")),
            chosen,
            pairs.column("score_chosen"),
            pairs.column("score_rejected"),
        ]
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(columns, schema)], schema=schema)


def other_splits(folder: Path, split: str, wanted: Any) -> dict[str, Any]:
    """The splits already saved in `folder` (a datasets folder) other than `split`: kept when another split is written,
    so `--split test` after `--split train` adds a split instead of replacing the DatasetDict."""
    from datasets import DatasetDict, load_from_disk

    if not folder.is_dir():
        return {}
    try:
        saved = load_from_disk(str(folder))
    except Exception:  # not a datasets folder (a half-written leftover): replaced whole
        return {}
    if not isinstance(saved, DatasetDict):
        return {}
    kept = {name: dataset for name, dataset in saved.items() if name != split}
    for name, dataset in kept.items():
        if dataset.features != wanted:
            raise NeatError(f"holds split '{name}' of another format; write this export to another --out", file=folder, field="format")
    return kept


def run_export(config: ExportConfig, argv: list[str] | None = None) -> tuple[Path, int]:
    """Write the export; returns (output folder, rows)."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    run_dir = Path(config.run)
    if not run_dir.is_dir():
        raise NeatError("run folder does not exist", file=run_dir)
    out = config.out_dir()
    with RunLock(run_dir):
        table = export_table(config)
        wanted = features(config.format)
        dataset = Dataset(table, info=DatasetInfo(features=wanted))
        splits = {**other_splits(out / "hf", config.split, wanted), config.split: dataset}
        atomic_write_table(out / f"{config.split}.parquet", table)
        # save_to_disk writes several files: build the folder aside, then swap it in whole
        staging = Path(tempfile.mkdtemp(prefix=".hf-", dir=out))
        try:
            # num_shards=1: datasets would write 0 shards for an empty split, which load_from_disk cannot read back
            DatasetDict(splits).save_to_disk(str(staging / "hf"), num_shards={name: 1 for name in splits})
            if (out / "hf").exists():
                shutil.rmtree(out / "hf")
            (staging / "hf").rename(out / "hf")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        update_manifest(
            run_dir,
            f"export:{config.format}",
            {
                "config": config.model_dump(mode="json"),
                "command": argv,
                "rows": table.num_rows,
                "out": str(out),
                "splits": sorted(splits),
                "finished": True,
            },
        )
        write_croissant(run_dir, out, config.format)
    return out, table.num_rows


def write_croissant(run_dir: Path, out: Path, fmt: str) -> Path:
    """`<out>/croissant.json` describing every split file in `out` (stages/provenance.py), from the manifest as it now is."""
    from neat_data.runfolder import atomic_write_json, read_manifest
    from neat_data.stages.provenance import croissant

    splits = {path.stem: (path, path.name) for path in sorted(out.glob("*.parquet"))}
    document = croissant(
        read_manifest(run_dir),
        name=f"{run_dir.name}-{fmt}",
        description=f"Preference data in neat-data's `{fmt}` layout (docs/FORMATS.md), built with neat-data from the run {run_dir.name}.",
        splits=splits,
    )
    atomic_write_json(out / "croissant.json", document)
    return out / "croissant.json"
