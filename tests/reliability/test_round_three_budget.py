"""Round three, budgets and --redo: a cap holds across a SIGKILL and a resume (the spend is in the manifest as it
happens), and a resumed --redo pass does not redo what it already redid. The fake server's own request log is the
evidence of what was paid for."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import served_generate_args, write_jsonl
from harness import kill_when, shard_names, start_neat

from neat_data.cli import cli
from neat_data.core.manifest import read_manifest


def billed_tokens(server) -> list[int]:
    """What the fake server billed each request it answered (prompt words + 5 per completion), in arrival order."""
    return [sum(len(str(m["content"]).split()) for m in body["messages"]) + 5 * int(body.get("n") or 1) for body in server.requests]


@pytest.mark.parametrize("flush_every", [1, 10])
def test_a_cap_holds_across_a_sigkill_and_a_resume(tmp_path: Path, fake_server, flush_every: int):
    """The stage entry was rewritten at the start without the budget, which was written only at the end: a killed run
    forgot its spend and the resumed run started from 0 (2,255 tokens against a 1,000 cap). With rows buffered between
    flushes (`--flush-every 10`), a spend recorded only at each flush forgot the buffered answers, which the resume
    paid for again (1,784 tokens against a 1,500 cap): a capped run records its spend after every answer."""
    server = fake_server(latency=0.03)
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question number {i}: how do I do thing {i}?"} for i in range(40)])
    run = tmp_path / "run"
    args = served_generate_args(source, server.url, run, max_concurrency=1, flush_every=flush_every, max_total_tokens=1000)
    process = start_neat(*args)
    # killed with answers taken but not yet written as rows (flush_every 10: between two flushes)
    killed = (lambda: len(shard_names(run / "generations")) >= 12) if flush_every == 1 else (lambda: len(server.requests) >= 25)
    assert kill_when(process, killed), "the run finished before the kill"
    killed_at = sum(billed_tokens(server))
    assert 300 < killed_at < 1000
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "stopped at the budget --max-total-tokens 1,000" in result.output, result.output
    billed = billed_tokens(server)
    # past the cap by at most what was in flight: one request at the kill (answered, not yet recorded), one at the end
    assert 1000 <= sum(billed) < 1000 + 2 * max(billed)
    assert read_manifest(run).stage("generate").entry()["budget"]["spent_tokens"] >= sum(billed) - max(billed)


def test_ctrl_c_keeps_the_spend_of_every_answer(tmp_path: Path, fake_server):
    """Ctrl-C lost the spend of the whole pass (it was written only at the end): now every answer taken is counted,
    its rows written or not; only the request in flight (at concurrency 1) may be missing."""
    server = fake_server(latency=0.03)
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question number {i}: how do I do thing {i}?"} for i in range(40)])
    run = tmp_path / "run"
    process = start_neat(*served_generate_args(source, server.url, run, max_concurrency=1, flush_every=5))
    deadline = time.monotonic() + 60
    while len(shard_names(run / "generations")) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert process.poll() is None, "the run finished before Ctrl-C"
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    billed = billed_tokens(server)
    spent = read_manifest(run).stage("generate").entry()["budget"]["spent_tokens"]
    assert sum(billed) - max(billed) <= spent <= sum(billed) and len(billed) > 10


def plain_run(tmp_path: Path, server, count: int = 10) -> tuple[Path, Path]:
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question number {i}: how do I do thing {i}?"} for i in range(count)])
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, served_generate_args(source, server.url, run, max_concurrency=1))
    assert result.exit_code == 0, result.output
    return source, run


def test_a_resumed_redo_pass_does_not_redo_what_it_already_redid(tmp_path: Path, fake_server):
    """A --redo pass stopped part-way (a cap here; a kill is the same) and run again selected the rows it had already
    regenerated a second time: they are still of the class (steering=neg), and were sent and paid for twice."""
    server = fake_server()
    source, run = plain_run(tmp_path, server)
    spent = read_manifest(run).stage("generate").entry()["budget"]["spent_tokens"]
    redo = [*served_generate_args(source, server.url, run, max_concurrency=1), "--redo", "steering=neg", "--seed", "7"]
    stopped = CliRunner().invoke(cli, [*redo, "--max-total-tokens", str(spent + 100)])
    assert stopped.exit_code == 0 and "stopped at the budget" in stopped.output, stopped.output
    first_pass = len(server.requests) - 20
    assert 0 < first_pass < 10
    # the dry run of the same command plans what the run then sends: the neg rows not redone yet
    dry = CliRunner().invoke(cli, [*redo, "--dry-run"])
    assert dry.exit_code == 0 and f"{10 - first_pass} requests → {10 - first_pass} rows for 10 prompts" in dry.output, dry.output
    rest = CliRunner().invoke(cli, redo)
    assert rest.exit_code == 0, rest.output
    redone = server.requests[20:]
    assert len(redone) == 10 and all(body["seed"] != 0 for body in redone)  # each neg request once, with the new seed
    assert len({json.dumps(body["messages"], sort_keys=True) for body in redone}) == 10
    rows = [row for path in sorted((run / "generations").glob("part-*.parquet")) for row in pq.read_table(path).to_pylist()]
    latest = {row["key"]: row for row in rows}
    assert len(latest) == 20 and all(json.loads(r["sampling"])["seed"] == (7 if r["steering"] == "neg" else 0) for r in latest.values())


def test_the_dry_run_plans_what_the_run_does(tmp_path: Path, fake_server):
    """The dry run had its own copy of the planning: it ignored --redo classes (planned 0 where the run sent 10) and
    skipped the folder's identity check (planned requests for a run that is refused)."""
    server = fake_server()
    source, run = plain_run(tmp_path, server)
    args = served_generate_args(source, server.url, run, max_concurrency=1)
    dry = CliRunner().invoke(cli, [*args, "--redo", "steering=pos", "--max-tokens", "64", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("dry run (nothing written, nothing sent): 10 requests → 10 rows for 10 prompts"), dry.output
    assert "completion tokens: at most 640 (rows × max_tokens)" in dry.output
    assert len(server.requests) == 20
    assert CliRunner().invoke(cli, [*args, "--redo", "steering=pos", "--max-tokens", "64"]).exit_code == 0
    assert len(server.requests) == 30
    for run_it in (False, True):  # another model: the run is refused, and so is its dry run, with the same line
        result = CliRunner().invoke(cli, [*args, "--model", "other", *(["--dry-run"] if not run_it else [])])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert 'run folder was made with a different config (model: "served" here, "other" now)' in lines[0]
    assert len(server.requests) == 30


@pytest.mark.slow
def test_a_recipe_cap_stops_its_round_and_a_higher_cap_continues_it(tmp_path: Path, tiny_model: Path, fake_server, monkeypatch):
    """A round's generate stopped at its cap was recorded finished (the round went on with part of its rows), and a
    higher cap was refused as another recipe (changed: generate)."""
    import yaml

    from neat_data.core.errors import NeatError
    from neat_data.rounds.recipe import load_recipe
    from neat_data.rounds.runner import run_rounds

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))  # the stages' processes import the scorer from tests/
    server = fake_server(cut_at_max_tokens=True)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i} of the set"} for i in range(8)])
    recipe = {
        "name": "t",
        "model": str(tiny_model),
        "out": str(tmp_path / "runs" / "t"),
        "prompts": {"source": str(prompts), "heldout": 2, "per_round": 3},
        "rounds": 1,
        "generate": {"backend": "openai", "base_url": server.url, "num_pos": 1, "num_neg": 1, "max_tokens": 4},
        "score": {"scorer": "python:view_runs:score_by_length"},
        "train": {"epochs": 1, "prompts_per_batch": 2},
        "evaluate": {"backend": "openai", "base_url": server.url, "max_tokens": 8},
    }
    recipe["generate"].update(max_concurrency=1, max_total_tokens=1)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    lines: list[str] = []
    with pytest.raises(NeatError, match="stage generate of round 1 failed"):
        run_rounds(load_recipe(path), echo=lines.append)
    assert any("stopped at the budget --max-total-tokens 1" in line for line in lines), lines
    generate_requests = [body for body in server.requests if body.get("max_tokens") == 4]
    assert len(generate_requests) == 1  # the first answer passed the cap: nothing more was sent
    manifest = read_manifest(tmp_path / "runs" / "t")
    assert not manifest.finished_in_round(1, "generate") and not manifest.finished_in_round(1, "score")
    rows = run_rounds(load_recipe(path, ["generate.max_total_tokens=100000"]), echo=lines.append)
    assert len(rows) == 2
    generate_requests = [body for body in server.requests if body.get("max_tokens") == 4]
    assert len(generate_requests) == 6 and len({json.dumps(b["messages"]) for b in generate_requests}) == 6  # each once
