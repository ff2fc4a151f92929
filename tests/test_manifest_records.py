"""Typed manifest records and the pair on unsteered rows (issue 26), against a run folder written by main f032316
(tests/data/old_run: `generate` 1 pos + 1 neg + 1 unsteered per prompt on the fake server, score, rank, export trl,
audit): the old manifest reads, every entry a stage does not rewrite is written back as it was (unknown keys and
kinds included), and generate writes the same rows as before, the unsteered ones now naming their drawn pair."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from conftest import served_generate_args, write_jsonl

from neat_data.core.pairs import choose_pair, load_libraries

OLD_RUN = Path(__file__).parent / "data" / "old_run"
OLD_PROMPTS = [{"prompt": "How do I boil an egg?"}, {"prompt": "What is the capital of France?"}]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parent.parent}:{Path(__file__).parent}"}  # the scorer module is a test
    return subprocess.run([sys.executable, "-m", "neat_data.cli", *args], capture_output=True, text=True, env=env)


def rows_of(run: Path) -> list[dict]:
    return sorted(pq.read_table(sorted((run / "generations").glob("*.parquet"))).to_pylist(), key=lambda r: r["key"])


def test_a_manifest_of_main_f032316_reads_and_keeps_every_entry_it_does_not_rewrite(tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    old = json.loads((run / "manifest.json").read_text())
    old["stages"]["generate"]["written_by_a_newer_version"] = {"x": [1, None]}  # an unknown key of a known kind
    old["stages"]["future:x"] = {"finished": True, "anything": 1}  # a kind this version does not know
    (run / "manifest.json").write_text(json.dumps(old))
    result = cli("score", str(run), "--scorer", "python:test_score:length_score", "--no-progress")
    assert result.returncode == 0, result.stderr
    new = json.loads((run / "manifest.json").read_text())
    assert {name: entry for name, entry in new["stages"].items() if name != "score"} == {
        name: entry for name, entry in old["stages"].items() if name != "score"
    }
    assert new["stages"]["score"]["config"] == {**old["stages"]["score"]["config"], "run": str(run)} and new["stages"]["score"]["finished"]
    assert "kind" not in new["stages"]["score"]  # the kind is the key's, never written


def test_generate_names_the_drawn_pair_on_unsteered_rows_and_writes_every_other_byte_as_before(tmp_path: Path, fake_server):
    """The run of tests/data/old_run generated again: same keys, seeds, texts; the unsteered rows' pair columns name
    the pair drawn for their prompt (before: null), their system prompt stays null (none was sent)."""
    server = fake_server()
    prompts = write_jsonl(tmp_path / "prompts.jsonl", OLD_PROMPTS)
    run = tmp_path / "run"
    result = cli(*served_generate_args(prompts, server.url, run, num_neutral=1))
    assert result.returncode == 0, result.stderr
    old, new = rows_of(OLD_RUN), rows_of(run)
    libraries = load_libraries(["harmless"])
    assert [r["key"] for r in new] == [r["key"] for r in old] and len(new) == 6
    for before, after in zip(old, new):
        if after["steering"] == "none":
            pair = choose_pair(libraries, 0, after["prompt_id"])
            assert (after["pair_library"], after["system_prompt_id"]) == ("harmless", pair.id)
            assert after["system_prompt"] is None and after["system_prompt_hash"] is None and after["system_mode"] == "none"
            before = {**before, "pair_library": "harmless", "system_prompt_id": pair.id}
        after = {name: value for name, value in after.items() if name in before or value is not None}  # columns added since: null
        assert after == before
