"""Shards are atomic, deduplicated by key on read, compacted without loss; corrupted shards are named."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from neat_data.core.errors import NeatError
from neat_data.core.runfolder import ShardedTable, atomic_write_bytes, atomic_write_json

SCHEMA = pa.schema([("key", pa.string()), ("value", pa.int64())])


def test_later_rows_supersede_earlier_ones_and_compaction_keeps_them(tmp_path: Path):
    table = ShardedTable(tmp_path / "t", SCHEMA)
    table.append([{"key": "a", "value": 1}, {"key": "b", "value": 2}])
    table.append([{"key": "a", "value": 10}, {"key": "c", "value": 3}])
    assert table.read().to_pylist() == [{"key": "b", "value": 2}, {"key": "a", "value": 10}, {"key": "c", "value": 3}]
    table.compact()
    assert len(table.shard_paths()) == 1
    assert table.read().to_pylist() == [{"key": "b", "value": 2}, {"key": "a", "value": 10}, {"key": "c", "value": 3}]


def test_temporary_files_are_ignored_and_failed_writes_leave_nothing(tmp_path: Path):
    table = ShardedTable(tmp_path / "t", SCHEMA)
    table.append([{"key": "a", "value": 1}])
    (tmp_path / "t" / ".part-000001.parquet.xyz.tmp").write_bytes(b"half a shard")
    assert table.read().num_rows == 1
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        table.append([{"key": "a", "value": "not an int"}])
    assert [p.name for p in (tmp_path / "t").iterdir() if not p.name.startswith(".part-000001")] == ["part-000000.parquet"]


def test_atomic_write_replaces_whole_file(tmp_path: Path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_bytes(path, b"{}\n")
    assert path.read_bytes() == b"{}\n" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_corrupted_shard_is_named(tmp_path: Path):
    table = ShardedTable(tmp_path / "t", SCHEMA)
    table.append([{"key": "a", "value": 1}])
    (tmp_path / "t" / "part-000001.parquet").write_bytes(b"garbage")
    with pytest.raises(NeatError) as caught:
        table.read()
    assert caught.value.file.endswith("part-000001.parquet") and "corrupted shard" in caught.value.message
