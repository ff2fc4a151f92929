"""Lineage: what each stage read and wrote, so that no stage consumes unfinished or stale input silently.

A stage's manifest entry records, when the stage finishes,
    wrote: {table: digest}   each table it wrote, as written
    reads: {table: digest}   each table it read, as it read it
for the tables of `neat_data.core.layout.LINEAGE` (generations, scored, ranked lists, pairs, dropped). A digest is
xxh3-128 over the table's content columns (`Table.columns`: its keys and what the stages after it use), in
row order and independent of how the rows are split into files, row groups or chunks (`digest`).

Before a stage reads a table, `require_current(run_dir, table)` walks up the tables it derives from, earliest first,
and stops with one line naming the run folder and the command to run when
  - the stage that writes a table has not finished (killed, still running, rows waiting in batches; a sharded stage:
    a shard not finished, or all finished and not merged yet), or
  - what that stage recorded it read differs from what its upstream stage recorded it wrote: the upstream table
    changed after it was read (e.g. `generate --redo` after `score`: "scores are stale: run `neat-data score …` first").
After reading, `check_read(run_dir, table, rows)` compares the digest of the rows read with the writer's `wrote` (the
table did not change after its stage finished, e.g. by a hand edit or a copy of another run's files) and returns it
for the reader's own `reads`. Only recorded digests are compared on the way up; the table a stage reads anyway is
hashed once (xxh3 over its content columns' buffers, no Python object per row: 1M scored rows read from
Parquet 0.014 s, their 200k ranked lists 0.006 s, pairs 0.002 s; benchmarks/rank_export.py's rank + export gains
~0.02 s).

Unknown is not stale: a table no stage recorded (written by hand or another tool) and a record without digests (a run
made before this module) skip the comparisons they lack — the behaviour before digests — while `finished` flags,
recorded by every version, are still checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data.core.errors import NeatError
from neat_data.core.layout import Table
from neat_data.core.manifest import GenerateRecord, Manifest, ScoreRecord, StageRecord, read_manifest


def digest(table: pa.Table, columns: Sequence[str]) -> str:
    """xxh3-128 of `columns` of `table`. Each column is hashed as separate streams — validity, lengths (strings, lists)
    and values, per nesting level — fed chunk by chunk, so the same rows in the same order give the same digest however
    they are chunked (a stream hashed in pieces equals the stream hashed whole)."""
    import xxhash

    whole = xxhash.xxh3_128(f"{table.num_rows};".encode())
    for name in columns:
        streams: dict[str, Any] = {}
        for chunk in table.column(name).chunks:
            _feed(chunk, streams, 0, xxhash.xxh3_128)
        whole.update(name.encode() + b"\0" + b"".join(f"{key};".encode() + streams[key].digest() for key in sorted(streams)))
    return whole.hexdigest()


def _feed(array: pa.Array, streams: dict[str, Any], depth: int, new: Any) -> None:
    def stream(kind: str) -> Any:
        return streams.setdefault(f"{depth}:{kind}", new())

    stream("valid").update(np.ones(len(array), dtype=bool) if not array.null_count else array.is_valid().to_numpy(zero_copy_only=False))
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        stream("lengths").update(pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64))
        _feed(array.flatten(), streams, depth + 1, new)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        array = pc.fill_null(array, "") if array.null_count else array  # a null slot's bytes are not content
        width = 8 if pa.types.is_large_string(kind) else 4
        offsets = np.frombuffer(
            array.buffers()[1], dtype=np.int64 if width == 8 else np.int32, count=len(array) + 1, offset=array.offset * width
        )
        stream("lengths").update(np.diff(offsets).astype(np.int64))
        data = array.buffers()[2]
        if data is not None and len(array):
            stream("values").update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        filled = pc.fill_null(array, False if pa.types.is_boolean(kind) else 0) if array.null_count else array
        stream("values").update(np.ascontiguousarray(filled.to_numpy(zero_copy_only=False)))
    else:  # a programming error: a layout table names a column of a type this does not hash
        raise TypeError(f"no digest for a column of type {kind}")


def table_digest(kind: Table, table: pa.Table) -> str:
    return digest(table, kind.columns)


def require_current(run_dir: Path, kind: Table, *, shard: Any = None, allow_pending: bool = False) -> Manifest:
    """Stop unless `kind` and every table it derives from was finished by its stage and is current (see the module's
    docstring); returns the manifest read. `shard` (a ShardSpec): a shard of a stage may read the matching shard of
    an unmerged sharded upstream once that shard has finished. `allow_pending`: a stage that waits only for batch
    requests still in flight counts as finished (the caller says what it leaves out)."""
    manifest = read_manifest(run_dir)
    _require(run_dir, manifest, kind, shard, allow_pending)
    return manifest


def _require(run_dir: Path, manifest: Manifest, kind: Table, shard: Any, allow_pending: bool) -> None:
    """Earliest table first, so that the line names the first stage to run again."""
    entry = manifest.stage(kind.stage)
    if not entry.recorded():
        return  # no stage recorded this table (written by hand or another tool): unknown, not refused
    for upstream in kind.upstream:
        _require(run_dir, manifest, upstream, None, False)
    if not entry.finished:
        if _shard_done(entry, shard) or (allow_pending and isinstance(entry, GenerateRecord) and entry.pending):
            return
        raise NeatError(_unfinished(run_dir, kind, entry), file=run_dir)
    for upstream in kind.upstream:
        seen = (entry.reads or {}).get(upstream.name)
        wrote = (manifest.stage(upstream.stage).wrote or {}).get(upstream.name)
        if seen and wrote and seen != wrote:
            raise NeatError(
                f"{kind.noun} are stale (the {upstream.noun} changed after {kind.stage} read them): run "
                f"`{_command(run_dir, kind.stage, entry)}` first",
                file=run_dir,
            )


def check_read(run_dir: Path, kind: Table, table: pa.Table, manifest: Manifest | None = None) -> str:
    """The digest of `table` as just read; a NeatError when its stage recorded another one (it changed since)."""
    seen = table_digest(kind, table)
    entry = (manifest or read_manifest(run_dir)).stage(kind.stage)
    wrote = (entry.wrote or {}).get(kind.name)
    if entry.finished and wrote and wrote != seen:
        raise NeatError(
            f"{kind.name}/ changed after {kind.stage} finished (edited, copied or written by another process?): run "
            f"`{_command(run_dir, kind.stage, entry)}` first",
            file=run_dir,
        )
    return seen


def _shard_done(entry: StageRecord, shard: Any) -> bool:
    shards = entry.shards or {}
    if shard is None or entry.merged or shards.get("num_shards") != shard.num_shards:
        return False
    return bool((shards.get("done", {}).get(str(shard.index)) or {}).get("finished"))


def _unfinished(run_dir: Path, kind: Table, entry: StageRecord) -> str:
    shards = entry.shards or {}
    if shards and not entry.merged:
        total = shards.get("num_shards", 0)
        done = shards.get("done", {})
        left = [index for index in range(total) if not (done.get(str(index)) or {}).get("finished")]
        if not left:
            return f"{kind.noun} are in {total} shards, not merged yet: run `neat-data merge {run_dir}` first"
        return (
            f"{kind.noun} are unfinished (shard {left[0]} of {total} has not finished): run `neat-data {kind.stage} … "
            f"--num-shards {total} --shard-index {left[0]}` to finish it, then `neat-data merge {run_dir}`, first"
        )
    rows = (entry.pending or {}).get("rows") if isinstance(entry, GenerateRecord) else None
    rows = entry.pending_rows if isinstance(entry, ScoreRecord) else rows
    if rows:
        return f"{kind.noun} are unfinished ({rows} rows wait in batches): run `{_command(run_dir, kind.stage, entry)}` again to collect them first"
    return (
        f"{kind.noun} are unfinished ({kind.stage} was stopped, failed or is still running): run `{_command(run_dir, kind.stage, entry)}` again "
        "to finish them first"
    )


def _command(run_dir: Path, stage: str, entry: StageRecord) -> str:
    """The command that recorded `entry` (without --overwrite: a re-run resumes), else the stage's plain command."""
    words = entry.command
    if words and len(words) > 1 and words[0] == "neat-data" and words[1] in (stage, "stage"):
        return " ".join(str(word) for word in words if word != "--overwrite")
    return f"neat-data {stage} {run_dir}" if stage != "generate" else f"neat-data generate … --out {run_dir}"
