"""Export stage: ranked lists / pairs / scored rows → datasets any trainer reads (columns per FORMATS.md).

Formats:
- `trl`           prompt (messages up to the last user turn), chosen / rejected (one assistant message each)
- `trl-implicit`  chosen / rejected as whole conversations (RewardTrainer)
- `kto`           prompt, completion (one assistant message), label (bool): by steering (pos → True, neg →
                  False; unsteered rows left out) or by score (`score >= kto_threshold`)
- `ranked`        prompt, prompt_id, responses, finish_reason, scores, steering, source_label: the NEAT trainer's input
                  (RRHF-compatible; finish_reason per candidate: the trainer ends only finished ones with the
                  end-of-turn token; lists ranked before it travelled export it as nulls = finished)
- `h4`            prompt (text of the last user turn), prompt_id, chosen, rejected (full conversations),
                  messages (= chosen), score_chosen, score_rejected (HuggingFaceH4/ultrafeedback_binarized), and each
                  side's source: strategy, steering_chosen/_rejected, source_label_chosen/_rejected
- `llamafactory`  messages (the prompt conversation, its system message first), chosen, rejected (one assistant
                  message each): LLaMA-Factory's sharegpt "ranking" layout in OpenAI-message style, with the
                  `dataset_info.json` entry its loader needs written beside it (`neat_<split>`)
Each is written as `<out>/<split>.parquet` and as a `datasets` folder `<out>/hf/` (save_to_disk), both with
explicit Features, so `load_dataset("parquet", …)` and `load_from_disk` read them back unchanged; `<out>/croissant.json`
(Croissant 1.0 + RAI + PROV, stages/provenance.py) describes the split files, their sha256 and how they were made.
All of them and the manifest's record are written aside and put in place together (StagedWrites), or none is.
Run: `neat-data export runs/demo --format trl` (default out: `<run>/export/<format>`).
An export with no rows is an error (exit 2), never an empty dataset that a trainer would take for data; so is a
prompt the chosen layout cannot hold as it is. Each format is one `Layout` in `LAYOUTS` (no fallback: every name
of `ExportFormat` has one, checked at import). docs/FORMATS.md says which trainer reads which, tested how.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neat_data.core import layout as run_layout
from neat_data.core.errors import NeatError
from neat_data.core.lineage import check_read, require_current
from neat_data.core.manifest import MANIFEST, Manifest, PlainRecord, manifest_record, read_manifest
from neat_data.core.runfolder import RunLock, StagedWrites
from neat_data.core.schemas import PAIRS, RANKED_LISTS, one_array
from neat_data.core.stage import Stage, StageResult
from neat_data.stages.rank.stage import read_ranked

# The one list of export formats (the CLI's --format choices, recipes' `exports`, push's --format derive from it).
# A new format: a name here, its `Layout` in `LAYOUTS` below, its row in tests/test_export.py, a trainer test.
ExportFormat = Literal["trl", "trl-implicit", "kto", "ranked", "h4", "llamafactory"]


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder (ranked/ for pair and list formats, scored/ for kto).")
    format: ExportFormat = Field(
        "trl",
        description="trl | trl-implicit (RewardTrainer) | kto | ranked (the NEAT trainer's input) | h4 | llamafactory (+ dataset_info.json).",
    )
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
        return self.out or run_layout.export(self.run, self.format)


def features(fmt: ExportFormat) -> Any:
    """The `datasets.Features` of a format, from its layout's column types."""
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    types = {
        "message": message,
        "conversation": List(message),
        "string": Value("string"),
        "strings": List(Value("string")),
        "float": Value("float64"),
        "floats": List(Value("float64")),
        "bool": Value("bool"),
    }
    return Features({name: types[kind] for name, kind in LAYOUTS[fmt].columns.items()})


def assistant_turns(texts: pa.ChunkedArray | pa.Array) -> pa.ListArray:
    """Each text as a one-message list [{"role": "assistant", "content": text}] (Arrow, no Python rows)."""
    texts = one_array(texts)
    messages = pa.StructArray.from_arrays([pa.repeat(pa.scalar("assistant", pa.string()), len(texts)), texts], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(len(texts) + 1, dtype=np.int32)), messages)


def append_turn(prompts: pa.ChunkedArray, texts: pa.ChunkedArray) -> pa.ListArray:
    """prompt messages + [assistant text], per row, by index arithmetic on the flattened messages."""
    prompts = one_array(prompts)
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


def last_user_text(prompts: pa.ChunkedArray) -> pa.Array:
    """The content of each conversation's last message (a user turn: prompts end on one)."""
    prompts = one_array(prompts)
    ends = np.cumsum(pc.list_value_length(prompts).to_numpy(zero_copy_only=False)) - 1
    return pc.struct_field(pc.list_flatten(prompts).take(pa.array(ends.astype(np.int64))), "content")


def check_alternating(fmt: str, prompts: pa.ChunkedArray, file: Path) -> None:
    """Refuse a prompt that is not [system?] user (assistant user)*: layouts that index turns by position (LLaMA-
    Factory's sharegpt converter) skip such a row with a log line instead of failing, so it is caught here."""
    prompts = one_array(prompts)
    lengths = pc.list_value_length(prompts).to_numpy(zero_copy_only=False).astype(np.int64)
    roles = pc.struct_field(pc.list_flatten(prompts), "role").to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    has_system = np.zeros(len(lengths), dtype=bool)
    has_system[lengths > 0] = roles[starts[lengths > 0]] == "system"
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(roles)) - starts[row_of] - has_system[row_of]  # turn index after the system message
    expected = np.where(position < 0, "system", np.where(position % 2 == 0, "user", "assistant"))
    bad_rows = set(row_of[roles != expected].tolist()) | set(np.flatnonzero((lengths - has_system) % 2 == 0).tolist())
    if bad_rows:
        row = min(bad_rows)
        got = ", ".join(str(r) for r in roles[starts[row] : starts[row] + lengths[row]]) or "no messages"
        raise NeatError(
            f"format '{fmt}' needs turns alternating user/assistant after one leading system message and ending on a "
            f"user turn (LLaMA-Factory would skip this row silently); got {got}",
            file=file,
            row=row,
            field="prompt",
        )


def _trl(pairs: pa.Table, config: ExportConfig) -> dict[str, Any]:
    return {
        "prompt": pairs.column("prompt"),
        "chosen": assistant_turns(pairs.column("chosen")),
        "rejected": assistant_turns(pairs.column("rejected")),
    }


def _trl_implicit(pairs: pa.Table, config: ExportConfig) -> dict[str, Any]:
    return {
        "chosen": append_turn(pairs.column("prompt"), pairs.column("chosen")),
        "rejected": append_turn(pairs.column("prompt"), pairs.column("rejected")),
    }


def _h4(pairs: pa.Table, config: ExportConfig) -> dict[str, Any]:
    chosen = append_turn(pairs.column("prompt"), pairs.column("chosen"))
    return {
        "prompt": last_user_text(pairs.column("prompt")),
        "prompt_id": pairs.column("prompt_id"),
        "chosen": chosen,
        "rejected": append_turn(pairs.column("prompt"), pairs.column("rejected")),
        "messages": chosen,
        "score_chosen": pairs.column("score_chosen"),
        "score_rejected": pairs.column("score_rejected"),
        **{name: column_or_nulls(pairs, name) for name in SOURCE_OF_SIDES},
    }


# Where each side of a pair came from (ranked/pairs.parquet): the layouts that allow columns of their own carry them.
SOURCE_OF_SIDES = ("strategy", "steering_chosen", "steering_rejected", "source_label_chosen", "source_label_rejected")


def column_or_nulls(table: pa.Table, name: str) -> pa.ChunkedArray | pa.Array:
    """`table[name]`, or nulls for a table written before the column existed (core/schemas.py ADDED_COLUMNS)."""
    if name in table.column_names:
        return table.column(name)
    kind = (PAIRS if name in PAIRS.names else RANKED_LISTS).field(name).type
    if not pa.types.is_list(kind):
        return pa.nulls(table.num_rows, kind)
    lengths = pc.list_value_length(table.column("responses")).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.nulls(int(lengths.sum()), kind.value_type))


def _llamafactory(pairs: pa.Table, config: ExportConfig) -> dict[str, Any]:
    check_alternating("llamafactory", pairs.column("prompt"), run_layout.RANKED_PAIRS.path(config.run))
    return {
        "messages": pairs.column("prompt"),
        "chosen": pc.list_flatten(assistant_turns(pairs.column("chosen"))),
        "rejected": pc.list_flatten(assistant_turns(pairs.column("rejected"))),
    }


def _kto(scored: pa.Table, config: ExportConfig) -> dict[str, Any]:
    return {"prompt": scored.column("prompt"), "completion": assistant_turns(scored.column("response")), "label": scored.column("label")}


def _ranked(lists: pa.Table, config: ExportConfig) -> dict[str, Any]:
    # finish_reason missing: ranked before finish reasons travelled, unknown = finished; source_label: generated
    return {name: column_or_nulls(lists, name) for name in LAYOUTS["ranked"].columns}


def llamafactory_dataset_info(splits: list[str]) -> dict[str, Any]:
    """The `dataset_info.json` LLaMA-Factory reads from `dataset_dir`: one entry `neat_<split>` per split."""
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}
    entry = {
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
        "tags": tags,
    }
    return {f"neat_{split}": {"file_name": f"{split}.parquet", **entry} for split in splits}


@dataclass(frozen=True)
class Layout:
    """One export format: the run table it reads, its columns (name → type, in order; `features` turns the types
    into `datasets` ones), how they are built, and any file a trainer needs beside the data."""

    reads: Literal["pairs", "lists", "scored"]
    columns: dict[str, str]
    build: Callable[[pa.Table, ExportConfig], dict[str, Any]]
    sidecar: Callable[[list[str]], dict[str, Any]] | None = None  # splits → <out>/dataset_info.json


LAYOUTS: dict[ExportFormat, Layout] = {
    "trl": Layout("pairs", {"prompt": "conversation", "chosen": "conversation", "rejected": "conversation"}, _trl),
    "trl-implicit": Layout("pairs", {"chosen": "conversation", "rejected": "conversation"}, _trl_implicit),
    "kto": Layout("scored", {"prompt": "conversation", "completion": "conversation", "label": "bool"}, _kto),
    "ranked": Layout(
        "lists",
        {
            "prompt": "conversation",
            "prompt_id": "string",
            "responses": "strings",
            "finish_reason": "strings",
            "scores": "floats",
            "steering": "strings",
            "source_label": "strings",
        },
        _ranked,
    ),
    "h4": Layout(
        "pairs",
        {
            "prompt": "string",
            "prompt_id": "string",
            "chosen": "conversation",
            "rejected": "conversation",
            "messages": "conversation",
            "score_chosen": "float",
            "score_rejected": "float",
            **dict.fromkeys(SOURCE_OF_SIDES, "string"),
        },
        _h4,
    ),
    "llamafactory": Layout(
        "pairs", {"messages": "conversation", "chosen": "message", "rejected": "message"}, _llamafactory, llamafactory_dataset_info
    ),
}
if set(LAYOUTS) != set(get_args(ExportFormat)):  # a name without a layout (or the reverse) fails at import, loudly
    raise RuntimeError(f"export formats without a layout: {set(get_args(ExportFormat)) ^ set(LAYOUTS)}")


def kto_rows(config: ExportConfig, seen: dict[str, str]) -> pa.Table:
    """The scored rows KTO learns from, with their `label`: by steering (unsteered and error rows left out) or by score.
    The scores must be finished and current (core/lineage.py); `seen` gets the digest of what was read."""
    run = Path(config.run)
    manifest = require_current(run, run_layout.SCORED)
    scored = run_layout.SCORED.rows(run).read()
    seen[run_layout.SCORED.name] = check_read(run, run_layout.SCORED, scored, manifest)
    if config.kto_label == "steering":
        rows = scored.filter(pc.and_(pc.equal(scored.column("status"), "ok"), pc.not_equal(scored.column("steering"), "none")))
        return rows.append_column("label", pc.equal(rows.column("steering"), "pos"))
    rows = scored.filter(pc.equal(scored.column("score_status"), "ok"))
    return rows.append_column("label", pc.greater_equal(rows.column("score"), config.kto_threshold))


def source_rows(config: ExportConfig, seen: dict[str, str]) -> pa.Table:
    """The run table the format reads, finished and current (core/lineage.py; `seen` gets the digest of what was read);
    none of its rows left is an error naming the format and why."""
    fmt, run = config.format, Path(config.run)
    reads = LAYOUTS[fmt].reads
    if reads == "scored":
        rows = kto_rows(config, seen)
        if rows.num_rows == 0:
            how = "no steered ok rows (pos/neg)" if config.kto_label == "steering" else "no rows with a score"
            raise NeatError(f"format '{fmt}' has nothing to export: {how}", file=run_layout.SCORED.path(run))
        return rows
    ranked = run_layout.RANKED_TABLES[reads]
    manifest = require_current(run, ranked)
    rows = read_ranked(run, reads)
    seen[ranked.name] = check_read(run, ranked, rows, manifest)
    if rows.num_rows == 0:
        if reads == "pairs":
            raise NeatError(
                f"format '{fmt}' is pairwise and rank kept no pairs ({run_layout.RANKED_DROPPED.file} says why; lower --min-margin "
                "or choose other --pairs)",
                file=ranked.path(run),
            )
        raise NeatError(f"format '{fmt}' has nothing to export: no ranked lists", file=ranked.path(run))
    return rows


def export_table(config: ExportConfig, seen: dict[str, str] | None = None) -> pa.Table:
    """The chosen format as an Arrow table with the exact export schema (pure given the run's tables; `seen` gets the
    digest of the table read)."""
    layout = LAYOUTS[config.format]
    schema = features(config.format).arrow_schema
    columns = layout.build(source_rows(config, {} if seen is None else seen), config)
    assert list(columns) == schema.names, (config.format, list(columns))  # a layout builds exactly its columns
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


def content_fingerprint(table: pa.Table) -> str:
    """The datasets fingerprint of an exported table: xxh3-128 of its schema and of each chunk's length, offset and
    buffers — the same content, the same fingerprint, as datasets' own. datasets would find it by pickling the whole
    table (0.15 s of exporting 200k pairs, benchmarks/rank_export.py); hashing the buffers takes 0.01 s."""
    import xxhash

    digest = xxhash.xxh3_128(table.schema.serialize())
    for column in table.columns:
        for chunk in column.chunks:
            digest.update(f"{len(chunk)}:{chunk.offset}:{chunk.null_count};".encode())
            for buffer in chunk.buffers():  # each prefixed by its size (-1: absent), so no two layouts read alike
                digest.update(f"{-1 if buffer is None else buffer.size}|".encode())
                if buffer is not None:
                    digest.update(buffer)
    return digest.hexdigest()


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
    """Write the export; returns (output folder, rows). Everything is read and checked first (the manifest too); then
    every file of the export — the split's Parquet, hf/, dataset_info.json, croissant.json — and the manifest's record
    are staged and put in place together, or none of them is (a failed write, a full disk)."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    run_dir = Path(config.run)
    if not run_dir.is_dir():
        raise NeatError("run folder does not exist", file=run_dir)
    out = config.out_dir()
    with RunLock(run_dir):
        manifest = read_manifest(run_dir)
        seen: dict[str, str] = {}
        table = export_table(config, seen)
        wanted = features(config.format)
        dataset = Dataset(table, info=DatasetInfo(features=wanted), fingerprint=content_fingerprint(table))
        splits = {**other_splits(out / "hf", config.split, wanted), config.split: dataset}
        with StagedWrites() as writes:  # the Parquet split is written while datasets saves hf/
            parquet = out / f"{config.split}.parquet"
            writes.write(parquet, table)
            sidecar = LAYOUTS[config.format].sidecar
            if sidecar is not None:
                writes.write_json(out / "dataset_info.json", sidecar(sorted(splits)))
            # num_shards=1: datasets would write 0 shards for an empty split, which load_from_disk cannot read back
            writes.write_folder(
                out / "hf", lambda folder: DatasetDict(splits).save_to_disk(str(folder), num_shards={name: 1 for name in splits})
            )
            manifest.set_stage(
                f"export:{config.format}",
                {
                    "config": config.model_dump(mode="json"),
                    "command": argv,
                    "rows": table.num_rows,
                    "out": str(out),
                    "splits": sorted(splits),
                    "finished": True,
                    "reads": seen,
                },
            )
            write_croissant(writes, manifest, run_dir, out, config.format, {parquet: writes.staged_path(parquet)})
            writes.write_json(run_dir / MANIFEST, manifest_record(manifest))  # last: the record that says it is done
    return out, table.num_rows


def write_croissant(writes: StagedWrites, manifest: Manifest, run_dir: Path, out: Path, fmt: str, staged: dict[Path, Path]) -> Path:
    """Stage `<out>/croissant.json` describing every split file of `out` (stages/provenance.py), from `manifest` as it
    will be; `staged`: split files being written, read from where they are until the block ends."""
    from neat_data.stages.provenance import croissant

    files = sorted({*out.glob("*.parquet"), *staged})
    splits = {path.stem: (staged.get(path, path), path.name) for path in files}
    document = croissant(
        manifest,
        name=f"{run_dir.name}-{fmt}",
        description=f"Preference data in neat-data's `{fmt}` layout (docs/FORMATS.md), built with neat-data from the run {run_dir.name}.",
        splits=splits,
    )
    writes.write_json(out / "croissant.json", document)
    return out / "croissant.json"


def export_result(config: ExportConfig, argv: list[str] | None) -> StageResult:
    out, rows = run_export(config, argv=argv)
    lines = [f"{rows} rows → {out}/{config.split}.parquet and {out}/hf (datasets.load_from_disk)"]
    return StageResult(lines, read_manifest(Path(config.run)).record(f"export:{config.format}", PlainRecord))


EXPORT = Stage(
    "export",
    ExportConfig,
    export_result,
    reads=lambda c: [
        run_layout.AUDIT.path(c.run),
        run_layout.RANKED.path(c.run),
        run_layout.SCORED.path(c.run),
    ],  # after the audit: its gate
    writes=lambda c: [run_layout.export(c.run, c.format)],
    record=PlainRecord,
    recipe_section="exports",
    manifest_entries=lambda c: [f"export:{c.format}"],
)
