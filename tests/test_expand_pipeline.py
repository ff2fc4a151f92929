"""pipelines/expand.yaml (issue 29): the bundled HH-layout file expanded end to end through the real `neat-data run`,
its generation against the fake OpenAI server and a `python:` scorer (`--set`), no training — the original pairs
reach the TRL export byte for byte, the new pairs are counted by strategy, and the audit's source check passes on the
balanced strategies."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from neat_data.core.runfolder import ShardedTable
from neat_data.core.schemas import GENERATIONS

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "pipelines" / "data" / "expand_hh.jsonl"


def response_length(prompts: list, responses: list[str]) -> list[float]:
    """The recipe test's scorer: the answer's length in characters."""
    return [float(len(response)) for response in responses]


def neat(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}  # the stages' processes import the scorer
    return subprocess.run([sys.executable, "-m", "neat_data.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_the_expand_recipe_carries_the_original_pairs_and_balances_the_sources(tmp_path, fake_server):
    server = fake_server()
    run = tmp_path / "expand"
    result = neat(
        "run",
        str(REPO / "pipelines" / "expand.yaml"),
        "--set",
        f"out={run}",
        "--set",
        "model=org/served",
        "--set",
        "generate.backend=openai",
        "--set",
        f"generate.base_url={server.url}",
        "--set",
        "score.scorer=python:test_expand_pipeline:response_length",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pairs by strategy: original 36, chosen-vs-neg 72, pos-vs-rejected 72; dataset answers among the candidates 72" in result.stderr
    assert result.stdout.strip() == f"Datasets: {run}/round_01/export/ (ranked, trl)   manifest: {run}/manifest.json"
    round_dir = run / "round_01"
    assert not (round_dir / "model").exists() and not (run / "round_00" / "eval").exists()  # train: null — nothing trained
    rows = ShardedTable(round_dir / "generations", GENERATIONS).read().to_pylist()
    dataset = [row for row in rows if row["steering"] == "dataset"]
    assert len(rows) == 36 * 6 and len(dataset) == 72
    assert sorted((row["source_label"], row["source_rank"]) for row in dataset) == [("chosen", 0)] * 36 + [("rejected", 1)] * 36
    # every original pair in the TRL export, its texts byte for byte as the file has them after the final "Assistant: "
    exported = {
        (row["chosen"][-1]["content"], row["rejected"][-1]["content"])
        for path in (round_dir / "export" / "trl").glob("*.parquet")
        for row in pq.read_table(path).to_pylist()
    }
    for line in BUNDLED.read_text(encoding="utf-8").splitlines():
        pair = json.loads(line)
        answers = tuple(pair[side][pair[side].rindex("\n\nAssistant: ") + len("\n\nAssistant: ") :] for side in ("chosen", "rejected"))
        assert answers in exported
    # the recipe's audit ran between rank and the exports, and printed its source check
    assert "source: PASS — source AUC (the dataset's answer is chosen) 0.500" in result.stderr
    source = next(c for c in json.loads((round_dir / "audit" / "audit.json").read_text())["checks"] if c["check"] == "source")
    assert source["verdict"] == "pass" and source["value"] == 0.5  # 72 dataset-chosen against 72 dataset-rejected pairs
    # provenance names the user's file, not the round's copy of its rows (the round runner passes the recipe's source)
    derived = json.loads((round_dir / "export" / "trl" / "croissant.json").read_text())["prov:wasDerivedFrom"][0]
    assert derived["files"] == [{"name": "expand_hh.jsonl", "sha256": hashlib.sha256(BUNDLED.read_bytes()).hexdigest()}]
    assert derived["counts"]["pairs_original"] == 36 and derived["counts"]["rows_original"] == 72
