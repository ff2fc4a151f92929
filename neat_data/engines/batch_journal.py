"""The journal of submitted batches: what a killed or re-run command reads to attach instead of paying twice.

In:  the records of one stage's batches (small JSON objects, `BatchRecord`); out: the same, durably stored.
A record is saved before every network step that creates something (upload, batch create) and after every
change of state, so a kill at any instant leaves a journal from which the next run can find its batches. The
large data of a batch (the input JSONL as uploaded, the downloaded output and error files) lives in the state
folder next to the journal, named after the record (`<name>.input.jsonl`, `<name>.output.jsonl`, …), never in
the journal itself.

Two journals implement the `BatchJournal` protocol (`load()` / `save(records)`):
- `FileBatchJournal(path)`: a JSON file of its own (the default, `<state folder>/journal.json`);
- `ManifestBatchJournal(run_dir, stage)`: the run's `manifest.json`, key `batches.<stage>` — beside, not inside,
  `stages.<stage>`, so a stage that rewrites its own entry (`update_manifest`) never drops the batch ids.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.manifest import edit_manifest, read_manifest

# Batch statuses after which nothing more happens on the server.
TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchRecord(BaseModel):
    """One batch file of one stage and what is known of it. `status`: prepared (input written, not uploaded) →
    uploaded (file id known, no batch yet) → the server's batch status (validating … completed / failed / expired /
    cancelled); vllm-batch: prepared → running → completed / failed."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="Unique in its journal; the stem of its files in the state folder.")
    backend: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None  # the variable's name (never its value), for `neat-data batch status|cancel`
    input_file: str  # relative to the state folder
    input_sha256: str
    requests: int
    bytes: int
    status: str = "prepared"
    input_file_id: str | None = None
    batch_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: dict[str, int] | None = None
    errors: list[str] = Field(default_factory=list)  # batch-level errors (validation failures, a failed local run)
    last_error: str | None = None  # the last failed control call (upload, create, poll, download), redacted
    collected: bool = False  # the output and error files (if any) are in the state folder
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def label(self) -> str:
        return f"batch {self.batch_id or self.name} {self.status}"


class BatchJournal(Protocol):
    """Durable storage of a stage's batch records. `save` must be atomic: the old list or the new one survives a kill."""

    def load(self) -> list[dict[str, Any]]: ...

    def save(self, records: list[dict[str, Any]]) -> None: ...


class FileBatchJournal:
    """Records in one JSON file ({"batches": [...]}), written temp-then-rename."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise NeatError(f"batch journal is not valid JSON ({error})", file=self.path) from None
        records = data.get("batches") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise NeatError("batch journal has no 'batches' list", file=self.path)
        return records

    def save(self, records: list[dict[str, Any]]) -> None:
        from neat_data.core.files import atomic_write_json

        atomic_write_json(self.path, {"batches": records})


class ManifestBatchJournal:
    """Records under `batches.<stage>` of `<run_dir>/manifest.json` (read-modify-write of that key only). The caller
    holds the run folder's lock, as every writer of the manifest does."""

    def __init__(self, run_dir: Path, stage: str):
        self.run_dir = Path(run_dir)
        self.stage = stage

    def load(self) -> list[dict[str, Any]]:
        return read_manifest(self.run_dir).batches.get(self.stage) or []  # the typed manifest refuses a non-list

    def save(self, records: list[dict[str, Any]]) -> None:
        with edit_manifest(self.run_dir) as manifest:
            manifest.batches[self.stage] = records


def load_records(journal: BatchJournal) -> list[BatchRecord]:
    records = []
    for position, raw in enumerate(journal.load()):
        try:
            records.append(BatchRecord.model_validate(raw))
        except Exception as error:
            raise NeatError(f"batch journal record {position} is malformed: {error}", field="batches") from None
    return records


def save_records(journal: BatchJournal, records: list[BatchRecord]) -> None:
    journal.save([record.model_dump(mode="json") for record in records])


def state_dir_for(run_dir: Path, stage: str) -> Path:
    """Where a stage's batch files live in a run folder: `<run>/batches/<stage>/` (the convention every reader uses)."""
    return layout.BATCHES.path(run_dir) / stage


def run_journals(run_dir: Path) -> dict[str, BatchJournal]:
    """Every batch journal of a run folder by stage: `batches.<stage>` in the manifest, and any
    `<run>/batches/<stage>/journal.json` of a stage whose records are not in the manifest."""
    journals: dict[str, BatchJournal] = {
        stage: ManifestBatchJournal(run_dir, stage) for stage in sorted(read_manifest(Path(run_dir)).batches)
    }
    for path in sorted(layout.BATCHES.path(run_dir).glob("*/journal.json")):
        journals.setdefault(path.parent.name, FileBatchJournal(path))
    return journals
