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
    assert read_manifest(tmp_path).finished_in_round(1, "rank")["seconds"] == 1.5 and not read_manifest(tmp_path).stage("score").recorded()
    before = (tmp_path / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError), edit_manifest(tmp_path) as manifest:  # an edit that fails half-way writes nothing
        manifest.stages.clear()
        raise RuntimeError("killed")
    assert (tmp_path / "manifest.json").read_bytes() == before
    (tmp_path / "manifest.json").write_text(json.dumps({"batches": {"generate": "not a list"}}), encoding="utf-8")
    with pytest.raises(NeatError) as error:
        read_manifest(tmp_path)
    assert "manifest.json: field 'batches.generate': not a neat-data manifest" in error.value.one_line()


def test_staged_writes_land_together_or_not_at_all(tmp_path: Path):
    from neat_data.core.runfolder import StagedWrites, atomic_write_table, read_parquet

    old = pa.table({"key": ["old"], "value": [0]})
    for name in ("a", "b"):
        atomic_write_table(tmp_path / f"{name}.parquet", old)
    new = pa.table({"key": [f"k{i}" for i in range(50_000)], "value": list(range(50_000))})
    # an error in the block: neither file is replaced, no temporary file is left
    with pytest.raises(RuntimeError, match="midway"):
        with StagedWrites() as writes:
            writes.write(tmp_path / "a.parquet", new)
            raise RuntimeError("midway")
    # a write that fails (its folder is a file): the error is raised, the other file is not put in place either
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.raises(OSError):
        with StagedWrites() as writes:
            writes.write(tmp_path / "b.parquet", new)
            writes.write(tmp_path / "blocked" / "c.parquet", new)
    assert read_parquet(tmp_path / "a.parquet").equals(old) and read_parquet(tmp_path / "b.parquet").equals(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet", "blocked"]
    with StagedWrites() as writes:
        writes.write(tmp_path / "a.parquet", new)
        writes.write(tmp_path / "sub" / "b.parquet", new)
    assert read_parquet(tmp_path / "a.parquet").equals(new) and read_parquet(tmp_path / "sub" / "b.parquet").equals(new)


def test_the_last_row_per_key_whatever_the_keys_look_like():
    """The fast proof of distinct keys (fixed-width keys hashed in numpy) and the exact pass agree with a dict."""
    import random

    from neat_data.core.runfolder import keep_last_per_key

    rng = random.Random(0)
    digests = [f"{rng.getrandbits(128):032x}" for _ in range(2000)]
    cases = {
        "distinct digests": digests,
        "digests, some repeated": digests + rng.sample(digests, 50),
        "mixed widths": [d[: rng.randint(0, 32)] for d in digests],
        "with nulls": digests[:10] + [None, None] + digests[5:8],
        "same bytes, other split": ["aaaaaaaabbbbbbbb", "aaaaaaaa", "bbbbbbbbaaaaaaaa", "bbbbbbbb"],
        "one": ["x"],
        "none": [],
    }
    for name, keys in cases.items():
        values = list(range(len(keys)))
        table = pa.table({"key": pa.array(keys, pa.string()), "value": values})
        last = {key: index for index, key in enumerate(keys)}
        expected = [{"key": keys[i], "value": i} for i in sorted(last.values())]
        assert keep_last_per_key(table).to_pylist() == expected, name
        if len(keys) > 3:  # chunked and sliced input reads the same
            chunked = pa.concat_tables([table.slice(0, 3), table.slice(3)])
            assert keep_last_per_key(chunked).to_pylist() == expected, name
            rest = {key: index for index, key in enumerate(keys) if index >= 1}
            assert keep_last_per_key(table.slice(1)).to_pylist() == [{"key": keys[i], "value": i} for i in sorted(rest.values())], name


def test_taking_the_lock_removes_a_killed_writers_staged_files(tmp_path: Path):
    from neat_data.core.runfolder import RunLock

    (tmp_path / "ranked").mkdir()
    (tmp_path / "ranked" / ".lists.parquet.k3j2.tmp").write_bytes(b"half a file")
    (tmp_path / "ranked" / "pairs.parquet").write_bytes(b"kept")
    with RunLock(tmp_path):
        pass
    assert sorted(p.name for p in (tmp_path / "ranked").iterdir()) == ["pairs.parquet"]


def test_reading_while_another_process_compacts_its_shard_folder(tmp_path: Path):
    """A `--num-shards` process compacts its own sub-folder (new part written, old ones removed) while another reads
    the whole table: a part removed between listing and reading is re-listed, never "corrupted", never a lost row."""
    import threading

    whole = ShardedTable(tmp_path / "t", SCHEMA)
    mine = ShardedTable(tmp_path / "t" / "shard-00000-of-00002", SCHEMA)
    theirs = ShardedTable(tmp_path / "t" / "shard-00001-of-00002", SCHEMA)
    theirs.append([{"key": "x", "value": 0}])
    written = [0]

    def compacting() -> None:
        for i in range(150):
            mine.append([{"key": f"k{i}", "value": i}])
            written[0] = i + 1
            mine.compact()

    writer = threading.Thread(target=compacting)
    writer.start()
    reads = 0
    while writer.is_alive() or reads == 0:
        before = written[0]
        rows = whole.read().num_rows
        assert rows - 1 >= before  # every row appended before this read began is in it
        reads += 1
    writer.join()
    assert whole.read().num_rows == 151 and reads > 10
