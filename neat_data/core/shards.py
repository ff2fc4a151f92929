"""Deterministic shards: N independent processes share one run folder, then `neat-data merge` joins them.

In:  `--num-shards N --shard-index i` on generate / score. Shard i takes the prompts whose
     `shard_of(prompt_id, N) == i` (a hash, so every prompt lands in exactly one shard and none is dropped,
     whatever N and however the prompts are ordered or filtered).
Out: `<run>/<table>/shard-0000i-of-0000N/part-*.parquet` — each shard its own sub-table, so part numbers
     never clash — and `stages.<stage>.shards.done["i"]` in `manifest.json` once the shard has finished.
Run: start N processes (one per GPU, node or endpoint) with the same command plus `--shard-index 0..N-1`,
     then `neat-data merge RUN`.

Locks: shard i holds `<run>/.lock-<table>-shard-0000i-of-0000N` for its whole life (a second copy of the
same shard is refused), and takes the run's `.lock` only for the milliseconds of a manifest update (shards
wait up to `MANIFEST_WAIT` s for each other). A single-process stage, `merge`, rank or export hold `.lock`
and refuse while any shard lock is held (`neat_data.core.runfolder.RunLock`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from neat_data.core.errors import NeatError
from neat_data.core.layout import Table
from neat_data.core.manifest import MANIFEST, read_manifest, update_manifest
from neat_data.core.runfolder import RunLock

MANIFEST_WAIT = 60.0  # s; a manifest update takes milliseconds, so waiting longer means a long-running writer
MAX_SHARDS = 99_999  # the folder name has five digits


def shard_of(prompt_id: str, num_shards: int) -> int:
    """Which shard owns a prompt: sha256 of the id, modulo N (same on every machine, Python and run)."""
    return int.from_bytes(hashlib.sha256(f"shard:{prompt_id}".encode()).digest()[:8], "big") % num_shards


@dataclass(frozen=True)
class ShardSpec:
    num_shards: int
    index: int

    @classmethod
    def from_options(cls, num_shards: int | None, shard_index: int | None) -> ShardSpec | None:
        """None for the ordinary single-process path; a NeatError naming the option for a bad combination."""
        if num_shards is None and shard_index is None:
            return None
        if num_shards is None or shard_index is None:
            raise NeatError("--num-shards and --shard-index go together", field="num_shards" if num_shards is None else "shard_index")
        if not 1 <= num_shards <= MAX_SHARDS:
            raise NeatError(f"must be between 1 and {MAX_SHARDS}, got {num_shards}", field="num_shards")
        if not 0 <= shard_index < num_shards:
            raise NeatError(f"must be between 0 and num_shards - 1 = {num_shards - 1}, got {shard_index}", field="shard_index")
        return cls(num_shards, shard_index)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}-of-{self.num_shards:05d}"

    def owns(self, prompt_id: str) -> bool:
        return shard_of(prompt_id, self.num_shards) == self.index


class ShardRun:
    """One shard's hold on a run folder: its own lock, and its start/finish records in the manifest.

    `table`: the layout's table of the stage (its manifest entry `table.stage`, its folder `table.name`).
    """

    def __init__(self, run_dir: Path, table: Table, spec: ShardSpec):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.stage, self.table, self.spec = run_dir, table.stage, table.name, spec
        self.folder = table.path(run_dir) / spec.name
        self._lock = FileLock(str(run_dir / f".lock-{table.name}-{spec.name}"))

    def __enter__(self) -> ShardRun:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise NeatError(f"{self.spec.name} of this run is already being written by another process", file=self.run_dir) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def start(self, entry: dict[str, Any], check_identity: Any) -> dict[str, Any]:
        """Record this shard as started. The first shard writes the stage entry (`entry`); later ones check
        theirs against it with `check_identity()` and keep it. Returns the stage entry as written."""
        with RunLock(self.run_dir, timeout=MANIFEST_WAIT, check_shards=False):
            previous = read_manifest(self.run_dir).stage(self.stage)
            if previous.config:
                check_identity()
            shards = previous.shards if not previous.merged else None
            if shards and shards.get("num_shards") != self.spec.num_shards:
                raise NeatError(
                    f"this run is split into {shards['num_shards']} shards, not {self.spec.num_shards} "
                    "(merge or finish those first, or use another --out)",
                    file=self.run_dir / MANIFEST,
                    field="num_shards",
                )
            written = previous.entry() if shards else dict(entry)
            written.update(finished=False, merged=False)
            done = dict((shards or {}).get("done", {}))
            done[str(self.spec.index)] = {"finished": False}
            written["shards"] = {"num_shards": self.spec.num_shards, "table": self.table, "done": done}
            update_manifest(self.run_dir, self.stage, written)
            return written

    def finish(self, record: dict[str, Any]) -> None:
        """Record this shard as finished (re-reading the manifest: other shards wrote to it meanwhile)."""
        with RunLock(self.run_dir, timeout=MANIFEST_WAIT, check_shards=False):
            entry = read_manifest(self.run_dir).stage(self.stage)
            entry.shards = entry.shards or {"num_shards": self.spec.num_shards, "table": self.table, "done": {}}
            entry.shards["done"][str(self.spec.index)] = {"finished": True, **record}
            update_manifest(self.run_dir, self.stage, entry)


def refuse_while_writing(run_dir: Path, kind: Table) -> None:
    """Stop if a shard process is still writing `kind` (e.g. scoring generations that are still growing)."""
    table = kind.name
    for path in sorted(run_dir.glob(f".lock-{table}-shard-*")):
        try:
            FileLock(str(path)).acquire(timeout=0).lock.release()
        except Timeout:
            raise NeatError(f"{table} {path.name[len(f'.lock-{table}-') :]} is still being written; wait for it", file=run_dir) from None


class StageOutput:
    """Where one process of a stage writes its table and manifest record: the whole run (holding the run's lock), or
    one shard of it (holding the shard's lock; the run's lock only for the moments of a manifest update). A stage is
    written once, with `shard` as a parameter: only which prompts it owns, its folder and its manifest record differ.

    `table`: the layout's table of the stage (layout.GENERATIONS, layout.SCORED).
    """

    def __init__(self, run_dir: Path, table: Table, shard: ShardSpec | None):
        from neat_data.core.runfolder import ShardedTable

        self.run_dir, self.stage, self.shard = run_dir, table.stage, shard
        self.whole = ShardedTable(table.path(run_dir), table.schema)  # every row of the run: merged, and every shard's
        self.folder = table.path(run_dir) / shard.name if shard else table.path(run_dir)
        self.table = ShardedTable(self.folder, table.schema)  # the rows this process writes
        self._hold: Any = ShardRun(run_dir, table, shard) if shard else RunLock(run_dir)

    def __enter__(self) -> StageOutput:
        self._hold.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hold.__exit__(*exc)

    def owns(self, prompt_id: str) -> bool:
        return self.shard is None or self.shard.owns(prompt_id)

    def start(self, entry: dict[str, Any], check_identity: Any) -> None:
        """Record the stage (or this shard) as started; `check_identity()` refuses a folder made with another config."""
        if isinstance(self._hold, ShardRun):
            self._hold.start(entry, check_identity)
        else:
            check_identity()
            update_manifest(self.run_dir, self.stage, {**entry, "finished": False})

    def finish(self, entry: dict[str, Any], shard_record: dict[str, Any]) -> None:
        """Record the whole stage (`entry`) as finished, or this shard (`shard_record`)."""
        if isinstance(self._hold, ShardRun):
            self._hold.finish(shard_record)
        else:
            update_manifest(self.run_dir, self.stage, {**entry, "finished": True})
