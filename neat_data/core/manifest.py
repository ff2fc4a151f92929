"""A run folder's manifest.json, typed: what each stage recorded, a batch backend's journal, a recipe run's rounds.

    manifest = read_manifest(run)                 # Manifest; an absent file is an empty one
    manifest.stage("generate").config             # a stage's typed record (an empty one when it never ran)
    manifest.record("score", ScoreRecord).scorer  # the record of a known kind, with its own fields
    with edit_manifest(run) as manifest:          # read, change, written back whole (temp + rename) on success
        manifest.set_stage("rank", entry)

Each entry of `stages` is a `StageRecord` of its kind, told by its key ("export:trl" → export; a kind without fields
of its own, or one this version does not know: a `PlainRecord`). The kind is never written: a manifest written before
the records were typed reads as it is and is written back byte for byte. Every writer goes through `edit_manifest`
(or `update_manifest`, its one-entry form), so no module rewrites the file from a dict of its own. Keys a newer neat-data wrote are kept as they are (`extra="allow"`). A manifest that is not a
JSON object of this shape — hand-edited, cut short — is one line naming the file and the key, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from neat_data.core.errors import NeatError, validation_message
from neat_data.core.files import atomic_write_json, decode_json

MANIFEST = "manifest.json"


class StageRecord(BaseModel):
    """What every stage records in its entry; each kind adds its own fields, and any other key is kept as written.
    An entry is written with the fields that were set (a null included) and nothing else: it keeps its exact shape."""

    model_config = ConfigDict(extra="allow")

    config: dict[str, Any] = Field(default_factory=dict)  # the stage's config as it ran (its model_dump)
    command: list[str] | None = None  # the argv it ran with
    finished: bool | None = None
    reads: dict[str, str] | None = None  # table → digest of what it read (core/lineage.py)
    wrote: dict[str, str] | None = None  # table → digest of what it wrote
    shards: dict[str, Any] | None = None  # a --num-shards run: {num_shards, table, done: {index: record}}
    merged: bool | None = None

    def entry(self) -> dict[str, Any]:
        """The entry as the manifest file holds it ({} for a stage that never ran)."""
        return self.model_dump(mode="json", exclude_unset=True, exclude={"kind"})

    def recorded(self) -> bool:
        return bool(self.entry())


class GenerateRecord(StageRecord):
    kind: Literal["generate"] = "generate"
    pending: dict[str, Any] | None = None  # {rows, batches}: submitted to a batch backend, not collected
    budget: dict[str, Any] | None = None  # the run's spend so far (costs.Budget.record)
    passes: list[dict[str, Any]] | None = None  # each pass of the command (--redo, --retry-errors)
    prompts: dict[str, Any] | None = None  # {source, count, duplicates_dropped}
    versions: dict[str, Any] | None = None  # package → version
    pair_libraries: list[dict[str, Any]] | None = None  # {name, path, pairs, sha256_16} of each library
    rows_dataset: int | None = None  # rows of a preference file's own answers (--responses keep)
    rows_generated: int | None = None

    @property
    def model(self) -> str | None:
        return self.config.get("model")

    @property
    def pairs(self) -> list[str]:
        return list(self.config.get("pairs") or [])

    @property
    def seed(self) -> int:
        return int((self.config.get("sampling") or {}).get("seed", 0))


class ScoreRecord(StageRecord):
    kind: Literal["score"] = "score"
    scorer: str | None = None  # the scorer as it names itself (self-contrast:<model>, judge:<model>)
    pending_rows: int | None = None  # rows a batch judge has not answered yet

    @property
    def scorer_name(self) -> str | None:
        return self.scorer or self.config.get("scorer")


class RankRecord(StageRecord):
    kind: Literal["rank"] = "rank"
    summary: dict[str, Any] = Field(default_factory=dict)


class AuditRecord(StageRecord):
    kind: Literal["audit"] = "audit"
    summary: dict[str, Any] = Field(default_factory=dict)


class PlainRecord(StageRecord):  # "other": a kind a newer neat-data wrote, kept as it is
    kind: Literal["export", "push", "fixed", "other"] = "other"


AnyRecord = Annotated[GenerateRecord | ScoreRecord | RankRecord | AuditRecord | PlainRecord, Field(discriminator="kind")]
_RECORD: TypeAdapter[AnyRecord] = TypeAdapter(AnyRecord)
_KINDS = ("generate", "score", "rank", "audit", "export", "push", "fixed")
R = TypeVar("R", bound=StageRecord)


def stage_record(name: str, entry: dict[str, Any] | StageRecord) -> StageRecord:
    """The typed record of the entry under key `name` ("export:trl" is an export's)."""
    if isinstance(entry, StageRecord):
        entry = entry.entry()
    kind = name.partition(":")[0]
    return _RECORD.validate_python({**entry, "kind": kind if kind in _KINDS else "other"})


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    # single stages (generate, score, rank, export:<format>, push:<config>, fixed, audit): each stage's own record
    stages: dict[str, AnyRecord] = Field(default_factory=dict)
    # batch backends: the journal of submitted batches per stage (kept apart from `stages`, which a stage rewrites)
    batches: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    # `neat-data run`: the recipe the folder is bound to, the split, and each round's finished stages by label
    recipe: dict[str, Any] | None = None
    rounds_planned: int | None = None
    command: str | None = None
    split: dict[str, Any] | None = None
    rounds: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    push: dict[str, dict[str, Any]] = Field(default_factory=dict)  # round → what its push published
    # a variants run's parent folder
    variants_recipe: dict[str, Any] | None = None
    variants: list[str] | None = None

    @field_validator("stages", mode="before")
    @classmethod
    def _kinds(cls, stages: Any) -> Any:
        """The kind of each entry is its key's: a manifest never writes it."""
        if not isinstance(stages, dict):
            return stages
        return {name: stage_record(name, entry) if isinstance(entry, dict) else entry for name, entry in stages.items()}

    def stage(self, name: str) -> StageRecord:
        """The record a stage wrote under `name`, or an empty one of its kind when it never ran."""
        return self.stages.get(name) or stage_record(name, {})

    def record(self, name: str, kind: type[R]) -> R:
        """`stage(name)` as the record class of its kind (an empty one when it never ran)."""
        entry = self.stage(name)
        return entry if isinstance(entry, kind) else kind()

    def set_stage(self, name: str, entry: dict[str, Any] | StageRecord) -> None:
        self.stages[name] = stage_record(name, entry)  # type: ignore[assignment]

    def finished_in_round(self, k: int, label: str) -> dict[str, Any]:
        """A round's record of one planned stage ({} when it has not finished)."""
        return self.rounds.get(str(k), {}).get(label) or {}

    def is_empty(self) -> bool:
        return not manifest_record(self)


def read_manifest(run_dir: Path) -> Manifest:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return Manifest()
    raw = decode_json(path, "manifest is ", "")
    if not isinstance(raw, dict):
        raise NeatError("manifest is not a neat-data manifest (a JSON object); restore it or use --overwrite", file=path)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as error:
        field, message = validation_message(error)
        raise NeatError(f"not a neat-data manifest ({message}); restore it or use --overwrite", file=path, field=field) from None


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    atomic_write_json(Path(run_dir) / MANIFEST, manifest_record(manifest))


def manifest_record(manifest: Manifest) -> dict[str, Any]:
    """The manifest as its file holds it (a stage that stages its outputs writes it with them: StagedWrites)."""
    # defaults left out: a single-stage run's manifest holds its stages, a recipe run's its rounds, nothing empty
    record = manifest.model_dump(mode="json", exclude_defaults=True, exclude={"stages"})
    stages = {name: entry.entry() for name, entry in manifest.stages.items()}
    return {**record, "stages": stages} if stages else record


@contextmanager
def edit_manifest(run_dir: Path) -> Iterator[Manifest]:
    """Read the manifest, let the caller change it, write it back whole — only when the block ends without an error.
    Callers that share a folder between processes hold the folder's RunLock around the edit."""
    manifest = read_manifest(run_dir)
    yield manifest
    write_manifest(run_dir, manifest)


def update_manifest(run_dir: Path, stage: str, entry: dict[str, Any] | StageRecord) -> None:
    """Set one stage's entry."""
    with edit_manifest(run_dir) as manifest:
        manifest.set_stage(stage, entry)
