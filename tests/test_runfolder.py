"""Shards are atomic, deduplicated by key on read, compacted without loss; corrupted shards are named."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from neat_data.core.errors import NeatError
from neat_data.core.files import atomic_write_bytes, atomic_write_json
from neat_data.core.runfolder import ShardedTable

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


def test_the_typed_manifest_keeps_unknown_keys_names_a_wrong_one_and_writes_only_whole_edits(tmp_path: Path):
    import json

    import pytest

    from neat_data.core.errors import NeatError
    from neat_data.core.manifest import edit_manifest, read_manifest, update_manifest

    assert read_manifest(tmp_path).is_empty() and not (tmp_path / "manifest.json").exists()
    update_manifest(tmp_path, "generate", {"config": {"model": "m"}})
    (tmp_path / "manifest.json").write_text(
        json.dumps({**json.loads((tmp_path / "manifest.json").read_text()), "written_by_a_newer_version": [1, 2]}), encoding="utf-8"
    )
    with edit_manifest(tmp_path) as manifest:
        manifest.batches["score"] = [{"id": "b1"}]
        manifest.rounds.setdefault("1", {})["rank"] = {"finished": True, "seconds": 1.5}
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written == {
        "stages": {"generate": {"config": {"model": "m"}}},
        "batches": {"score": [{"id": "b1"}]},
        "rounds": {"1": {"rank": {"finished": True, "seconds": 1.5}}},
        "written_by_a_newer_version": [1, 2],
    }
    assert read_manifest(tmp_path).finished_in_round(1, "rank")["seconds"] == 1.5 and read_manifest(tmp_path).stage("score") == {}
    before = (tmp_path / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError), edit_manifest(tmp_path) as manifest:  # an edit that fails half-way writes nothing
        manifest.stages.clear()
        raise RuntimeError("killed")
    assert (tmp_path / "manifest.json").read_bytes() == before
    (tmp_path / "manifest.json").write_text(json.dumps({"batches": {"generate": "not a list"}}), encoding="utf-8")
    with pytest.raises(NeatError) as error:
        read_manifest(tmp_path)
    assert "manifest.json: field 'batches.generate': not a neat-data manifest" in error.value.one_line()
