"""A run folder's manifest.json, typed: what each stage recorded, a batch backend's journal, a recipe run's rounds.

    manifest = read_manifest(run)                 # Manifest; an absent file is an empty one
    manifest.stage("generate").get("config")      # a stage's entry ({} when it never ran)
    with edit_manifest(run) as manifest:          # read, change, written back whole (temp + rename) on success
        manifest.stages["rank"] = entry

Every writer goes through `edit_manifest` (or `update_manifest`, its one-entry form), so no module rewrites the file
from a dict of its own. Keys a newer neat-data wrote are kept as they are (`extra="allow"`). A manifest that is not a
JSON object of this shape — hand-edited, cut short — is one line naming the file and the key, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from neat_data.core.errors import NeatError, validation_message
from neat_data.core.files import atomic_write_json, decode_json

MANIFEST = "manifest.json"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    # single stages (generate, score, rank, export:<format>, push:<config>, fixed): each stage's own record
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
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

    def stage(self, name: str) -> dict[str, Any]:
        """The entry a stage recorded, or {} when it never ran."""
        return self.stages.get(name) or {}

    def finished_in_round(self, k: int, label: str) -> dict[str, Any]:
        """A round's record of one planned stage ({} when it has not finished)."""
        return self.rounds.get(str(k), {}).get(label) or {}

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_defaults=True)


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
    return manifest.model_dump(mode="json", exclude_defaults=True)


@contextmanager
def edit_manifest(run_dir: Path) -> Iterator[Manifest]:
    """Read the manifest, let the caller change it, write it back whole — only when the block ends without an error.
    Callers that share a folder between processes hold the folder's RunLock around the edit."""
    manifest = read_manifest(run_dir)
    yield manifest
    write_manifest(run_dir, manifest)


def update_manifest(run_dir: Path, stage: str, entry: dict[str, Any]) -> None:
    """Set one stage's entry."""
    with edit_manifest(run_dir) as manifest:
        manifest.stages[stage] = entry
