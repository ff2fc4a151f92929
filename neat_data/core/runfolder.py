"""Run folders: Parquet shards written atomically, a manifest, a lock, and resume bookkeeping.

Layout of a stage's output inside a run folder:
    <run>/<table>/part-000000.parquet, part-000001.parquet, …   (shards, written temp-then-rename)
    <run>/manifest.json                                        (resolved configs, versions, counts)
    <run>/.lock                                                (one writer at a time; taking it removes
                                                                a killed writer's leftover shard temp files)
    <run>/<table>/shard-00002-of-00004/part-*.parquet          (a sharded run's rows: neat_data.core.shards)
A shard is either complete or absent: it is written under a dot-prefixed temporary name, fsynced, then
renamed. Readers take every shard in order and keep the *last* row for each `key`, so a re-run that
retries an error row supersedes it without rewriting older shards. `compact` folds the shards into one.
Rows written by `--num-shards` processes live in per-shard sub-folders; readers see them too, and
`compact`/`rewrite` fold them into the top level (which is what `neat-data merge` does after its checks).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from neat_data.core.errors import NeatError, with_path
from neat_data.core.files import atomic_write_bytes, decode_json, json_bytes
from neat_data.core.schemas import one_array

_SHARD = re.compile(r"^part-(\d{6})\.parquet$")
SHARD_DIR = re.compile(r"^shard-(\d{5})-of-(\d{5})$")


def atomic_write_table(path: Path, table: pa.Table) -> None:
    atomic_write_batches(path, table.schema, table.to_batches())


def atomic_write_batches(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]) -> None:
    """One Parquet file from a stream of record batches (or tables), whole or absent: peak memory is one batch."""
    os.replace(_write_aside(path, schema, batches), path)


def _write_aside(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]) -> str:
    """Write the file under a temporary name beside `path`, fsynced; returns that name (removed if the write fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        with pq.ParquetWriter(temp, schema, compression="zstd") as writer:
            for batch in batches:
                if batch.num_rows:
                    writer.write(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch], schema=schema))
        with open(temp, "rb+") as out:
            os.fsync(out.fileno())
    except OSError as error:  # a full disk fails inside the Parquet writer, which names no file
        Path(temp).unlink(missing_ok=True)
        raise with_path(error, path) from error
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return temp


class StagedWrites:
    """Every file of one output — Parquet tables (written in background threads while the caller goes on computing),
    JSON / markdown / PNG bytes, whole folders (datasets' save_to_disk), the manifest that records them — written aside
    and put in place together when the block ends without an error; otherwise none of them is (a stage's outputs stay
    a matching set, and a disk that fills up midway leaves no lone file), and a folder made for them is removed again.

    A Parquet writer encodes and compresses on one core and releases the GIL: rank writes lists.parquet while it forms
    the pairs, and export writes train.parquet while datasets saves hf/ (benchmarks/rank_export.py). Files are put in
    place in the order they were staged: stage the record that says "finished" (the manifest) last.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="neat-write")
        self._staged: list[tuple[Path, Future[str], bool]] = []  # (final path, its temporary name, a folder?)
        self._made: list[Path] = []  # folders made for the outputs, outermost first

    def write(self, path: Path, table: pa.Table) -> None:
        """A Parquet file, written in a background thread."""
        self._make_folder(path.parent)
        self._staged.append((path, self._pool.submit(_write_aside, path, table.schema, table.to_batches()), False))

    def write_bytes(self, path: Path, data: bytes) -> None:
        self._make_folder(path.parent)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self._staged.append((path, _done(temp), False))  # listed first: removed on failure even if the write fails
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())

    def write_json(self, path: Path, value: Any) -> None:
        self.write_bytes(path, json_bytes(value))

    def write_folder(self, path: Path, fill: Callable[[Path], None]) -> None:
        """A folder `fill(folder)` builds under a temporary name; it replaces `path` (and all it held) whole."""
        self._make_folder(path.parent)
        temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        self._staged.append((path, _done(str(temp)), True))
        fill(temp / path.name)  # a name of its own inside: fill may expect to create the folder itself
        for child in temp.iterdir():
            if child.name != path.name:
                raise RuntimeError(f"{fill} wrote {child.name} beside {path.name}")

    def staged_path(self, path: Path) -> Path:
        """Where a staged file is until the block ends (waits for its write): to hash or read it before it is in place."""
        for final, future, folder in reversed(self._staged):
            if final == path:
                return Path(future.result()) / path.name if folder else Path(future.result())
        raise KeyError(path)

    def _make_folder(self, folder: Path) -> None:
        missing = [parent for parent in [folder, *folder.parents] if not parent.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self._made.extend(reversed(missing))

    def __enter__(self) -> StagedWrites:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
        temps: list[tuple[str, Path, bool]] = []
        error: BaseException | None = None
        for path, future, folder in self._staged:
            try:
                temps.append((future.result(), path, folder))
            except BaseException as failure:  # a write cancelled by the block's own error raises CancelledError here
                error = error or failure
        if exc_type is None and error is None:
            for temp, path, folder in temps:
                if folder:
                    _replace_folder(Path(temp) / path.name, path)
                    os.rmdir(temp)
                else:
                    os.replace(temp, path)
            return
        for temp, _, folder in temps:
            if folder:
                shutil.rmtree(temp, ignore_errors=True)
            else:
                Path(temp).unlink(missing_ok=True)
        for made in reversed(self._made):  # innermost first; a folder something else wrote into stays
            try:
                made.rmdir()
            except OSError:
                pass
        if exc_type is None and error is not None:
            raise error


def _done(value: str) -> Future[str]:
    future: Future[str] = Future()
    future.set_result(value)
    return future


def _replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target`: the old folder is moved aside first, then removed."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=".tmp", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(new, target)
        shutil.rmtree(old)
    else:
        os.replace(new, target)


class RunLock:
    """An exclusive lock on a run folder (or any folder a command writes: a trained model, an eval folder); a second
    writer is refused at once with a clear message."""

    _covering: set[Path] = set()  # folders this process holds with covers_nested=True

    def __init__(self, run_dir: Path, *, timeout: float = 0, check_shards: bool = True, beside: bool = False, covers_nested: bool = False):
        """`timeout`: seconds to wait (shard processes wait for each other's short manifest updates);
        `check_shards`: also refuse while a `--num-shards` process holds its `.lock-*` (neat_data.core.shards);
        `beside`: the lock is the file `.<name>.lock` next to the folder, which is not created — for a folder replaced
        whole when it is written (a trained model), which would carry a lock inside it away;
        `covers_nested`: a command that runs other stages on its folder in turn (evaluate: generate, then score) holds
        it across them — a RunLock this process then takes on the same folder passes through."""
        if run_dir.exists() and not run_dir.is_dir():
            raise NeatError("is an existing file, not a run folder", file=run_dir, field="out")
        self.folder = run_dir
        self.path = run_dir.parent / f".{run_dir.name}.lock" if beside else run_dir / ".lock"
        self._lock = FileLock(str(self.path))
        self.timeout = timeout
        self.check_shards = check_shards and not beside
        self.covers_nested = covers_nested
        self._passes = False

    def __enter__(self) -> RunLock:
        if self.path.resolve() in RunLock._covering:
            self._passes = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)  # made when taken: a lock only built checks the folder
        try:
            self._lock.acquire(timeout=self.timeout)
        except Timeout:
            raise NeatError(
                "run folder is in use by another neat-data process (wait for it, or use another --out)", file=self.folder
            ) from None
        for shard_lock in sorted(self.path.parent.glob(".lock-*")) if self.check_shards else []:
            try:
                FileLock(str(shard_lock)).acquire(timeout=0).lock.release()
            except Timeout:
                self._lock.release()
                raise NeatError(
                    f"a --num-shards process is writing to this run folder ({shard_lock.name[6:]}); wait for it", file=self.path.parent
                ) from None
        if self.check_shards:
            # No shard process is writing (checked above) and single-process tables are only written under
            # this lock, so a temp file now is a killed writer's leftover (a shard's, or ranked/'s staged files).
            for temp in self.path.parent.glob("*/.*.parquet.*.tmp"):
                temp.unlink(missing_ok=True)
        if self.covers_nested:
            RunLock._covering.add(self.path.resolve())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._passes:
            return
        RunLock._covering.discard(self.path.resolve())
        self._lock.release()


class PartRemoved(NeatError):
    """A part listed by a reader was gone when it came to read it: another process compacted that folder."""


_READ_ATTEMPTS = 20  # listings a read tries while parts keep being compacted under it


class ShardedTable:
    """A table stored as numbered Parquet shards in one folder, deduplicated by `key` on read."""

    def __init__(self, folder: Path, schema: pa.Schema):
        self.folder = folder
        self.schema = schema

    def shard_paths(self) -> list[Path]:
        """Top-level parts in write order, then the parts of each shard sub-folder (disjoint prompts)."""
        subfolders = sorted(p for p in self.folder.iterdir() if SHARD_DIR.match(p.name) and p.is_dir()) if self.folder.is_dir() else []
        return self._own_parts() + [path for sub in subfolders for path in ShardedTable(sub, self.schema)._own_parts()]

    def _own_parts(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        shards = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _SHARD.match(p.name))]
        return [p for _, p in sorted(shards)]

    def _next_index(self) -> int:
        paths = self._own_parts()  # numbering is per folder: shard sub-folders never collide with the top level
        match = _SHARD.match(paths[-1].name) if paths else None
        return int(match.group(1)) + 1 if match else 0

    def append(self, rows: list[dict[str, Any]]) -> Path | None:
        """Write `rows` as one new shard (atomically). Returns its path."""
        if not rows:
            return None
        table = pa.Table.from_pylist(rows, schema=self.schema)
        path = self.folder / f"part-{self._next_index():06d}.parquet"
        atomic_write_table(path, table)
        return path

    def _read_part(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        from neat_data.core.schemas import ADDED_COLUMNS

        names = self.schema.names if columns is None else columns
        present_names = set(_column_names(path))
        late = [name for name in names if name in ADDED_COLUMNS and present_names and name not in present_names]
        try:
            table = pq.read_table(path, columns=[name for name in names if name not in late])
            for name in late:  # a shard written before the column existed
                table = table.append_column(self.schema.field(name), pa.nulls(table.num_rows, self.schema.field(name).type))
        except Exception as error:  # pyarrow raises several types for truncated/corrupt files and missing columns
            if not path.exists():
                raise PartRemoved("removed while being read (another process compacted this table)", file=path) from None
            present = _column_names(path)
            missing = [name for name in names if name not in present]
            if present and missing:
                raise NeatError("shard lacks a column (written by another version or stage?)", file=path, field=missing[0]) from None
            raise NeatError(f"corrupted shard ({_short(error)}); delete it to regenerate its rows, or use --overwrite", file=path) from None
        try:
            return table.select(names).cast(pa.schema([self.schema.field(name) for name in names]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
            wrong = next((name for name in names if table.schema.field(name).type != self.schema.field(name).type), names[0])
            raise NeatError(
                f"column has type {table.schema.field(wrong).type}, expected {self.schema.field(wrong).type} ({_short(error)})",
                file=path,
                field=wrong,
            ) from None

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All rows (or only `columns`, plus `key`), the last one written for each key, in write order. Unreadable
        shards and shards with a missing or mistyped column are a NeatError naming the file and the column."""
        names = None if columns is None else ["key", *[c for c in columns if c != "key"]]
        for attempt in range(_READ_ATTEMPTS):
            try:
                tables = [self._read_part(path, names) for path in self.shard_paths()]
                break
            except PartRemoved:
                # A `--num-shards` process compacts its own sub-folder: it writes the new part before it removes the
                # old ones, so listing again finds every row (in the new part, or in both: the last one wins).
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        if not tables:
            schema = self.schema if names is None else pa.schema([self.schema.field(n) for n in names])
            return schema.empty_table()
        table = pa.concat_tables(tables)
        return keep_last_per_key(table)

    def compact(self) -> None:
        """Fold all shards into one: same rows, fewer files. Streams part by part (peak memory: one part and the
        key column), so it holds for tables larger than memory."""
        paths = self.shard_paths()
        if len(paths) <= 1:
            return
        keys = [self._read_part(path, ["key"]).column("key") for path in paths]
        keep = _last_occurrence_masks(keys)
        self._replace(
            paths, (self._read_part(path).filter(mask) if mask is not None else self._read_part(path) for path, mask in zip(paths, keep))
        )

    def rewrite(self, table: pa.Table) -> None:
        """Replace every row by `table`'s (same keys, new values). The new shard is written before the old
        ones are removed, and it wins on read, so a crash in between leaves a correct table."""
        self._replace(self.shard_paths(), [table.select(self.schema.names).cast(self.schema)] if table.num_rows else [])

    def _replace(self, old: list[Path], tables: Iterable[pa.Table]) -> None:
        iterator: Iterator[pa.Table] = iter(tables)
        first = next(iterator, None)
        new = None
        if first is not None:
            new = self.folder / f"part-{self._next_index():06d}.parquet"
            atomic_write_batches(new, self.schema, _chain(first, iterator))
        for path in old:
            if path != new:
                path.unlink()
        self._remove_empty_shard_folders()

    def _remove_empty_shard_folders(self) -> None:
        for sub in self.folder.iterdir() if self.folder.is_dir() else []:
            if SHARD_DIR.match(sub.name) and sub.is_dir() and not any(p for p in sub.iterdir() if not p.name.endswith(".tmp")):
                for temp in sub.iterdir():
                    temp.unlink()
                sub.rmdir()

    def clear(self) -> None:
        for path in self.shard_paths():
            path.unlink()
        self._remove_empty_shard_folders()
        for temp in self.folder.glob(".part-*.tmp") if self.folder.is_dir() else []:
            temp.unlink()


def _chain(first: pa.Table, rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    yield first
    yield from rest


def _column_names(path: Path) -> list[str]:
    try:
        return pq.read_schema(path).names
    except Exception:
        return []


def _short(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "…"


def last_occurrence(keys: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """A mask of the rows that are the last written for their key; None when every key is distinct (every run that
    retried nothing). In Arrow and numpy: one hash pass, no Python object per row (1M keys: 0.5 s → 0.1 s).
    A null key counts as one key, as it did when this was a dict."""
    keys = one_array(keys)
    if _surely_distinct(keys):
        return None
    codes = pc.dictionary_encode(keys, null_encoding="encode")
    distinct = len(codes.dictionary)
    if distinct == len(codes):
        return None
    last = np.full(distinct, -1, dtype=np.int64)
    np.maximum.at(last, codes.indices.to_numpy(zero_copy_only=False), np.arange(len(codes), dtype=np.int64))
    mask = np.zeros(len(codes), dtype=bool)
    mask[last] = True
    return mask


def _surely_distinct(keys: pa.Array) -> bool:
    """True only if no two keys are equal, checked fast for the keys neat-data writes (32 hex digits, so every key has
    the same width): a 64-bit hash of each key's bytes, sorted; distinct hashes prove distinct keys. False means "not
    proven" (keys of mixed widths, nulls, or a hash shared) and the exact check runs. 1M keys: 0.02 s, against 0.14 s
    for Arrow's hash table."""
    n = len(keys)
    if n < 2 or keys.type != pa.string() or keys.null_count:
        return n < 2 and not keys.null_count
    offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32, count=n + 1, offset=keys.offset * 4)
    width = int(offsets[1] - offsets[0])
    if width == 0 or width % 8 or not (np.diff(offsets) == width).all():
        return False
    words = np.frombuffer(keys.buffers()[2], dtype=np.uint64, count=n * width // 8, offset=int(offsets[0])).reshape(n, width // 8)
    hashes = np.zeros(n, dtype=np.uint64)
    for column in range(width // 8):
        hashes = (hashes ^ words[:, column]) * np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2**64, as meant
    hashes.sort()
    return not (hashes[1:] == hashes[:-1]).any()


def _last_occurrence_masks(keys: list[pa.ChunkedArray]) -> list[pa.Array | None]:
    """Per part, a mask of the rows that are the last written for their key (None: keep every row)."""
    mask = last_occurrence(pa.chunked_array([chunk for column in keys for chunk in column.chunks], type=pa.string()))
    if mask is None:
        return [None] * len(keys)
    masks, start = [], 0
    for column in keys:
        masks.append(pa.array(mask[start : start + len(column)]))
        start += len(column)
    return masks


def keep_last_per_key(table: pa.Table) -> pa.Table:
    """Drop earlier rows whose `key` appears again later (a retried row supersedes its error row)."""
    if table.num_rows == 0:
        return table
    mask = last_occurrence(table.column("key"))
    return table if mask is None else table.filter(pa.array(mask))


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object a stage wrote (metrics.json, neat_train.json): {} when the file is absent; a file that is not
    UTF-8 JSON (hand-edited, cut short) is one line naming it, never a traceback."""
    if not path.is_file():
        return {}
    hint = "; restore it or run that stage again"
    value = decode_json(path, "", hint)
    if not isinstance(value, dict):
        raise NeatError(f"expected a JSON object, found {type(value).__name__}{hint}", file=path)
    return value


def count_by(table: pa.Table, column: str) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    counts = pc.value_counts(table.column(column))
    return {str(item["values"]): int(item["counts"]) for item in counts.to_pylist()}


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file another stage wrote (ranked lists, an export); a truncated or foreign file is one NeatError line."""
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise NeatError("file not found", file=path) from None
    except Exception as error:  # ArrowInvalid (truncated, not Parquet), KeyError-like column errors, OSError
        present = _column_names(path)
        missing = [c for c in columns or [] if present and c not in present]
        if missing:
            raise NeatError("missing column", file=path, field=missing[0]) from None
        raise NeatError(f"cannot read Parquet ({_short(error)}); re-run the stage that wrote it", file=path) from None


def atomic_write_figure(path: Path, figure: Any) -> None:
    """A matplotlib figure as a PNG (110 dpi), whole or absent; the figure is closed."""
    atomic_write_bytes(path, figure_png(figure))


def figure_png(figure: Any) -> bytes:
    """A matplotlib figure's PNG (110 dpi); the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": "neat-data"})
    plt.close(figure)
    return buffer.getvalue()


def empty_folder(folder: Path) -> None:
    """Remove everything in `folder` but its lock file (--overwrite of a run folder this process holds)."""
    for child in folder.iterdir():
        if child.name != ".lock":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
