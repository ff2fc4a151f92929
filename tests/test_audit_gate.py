"""The data audit on the data's path: `neat-data run` audits each round between rank and the exports, and a FAIL of
a check the recipe's `audit.fail_on` names stops the round there (exit 5, one line naming the check, its figure and its
threshold; nothing exported, nothing trained); the same run with the section changed resumes at the audit. Generation
and evaluation on the fake OpenAI server, whose every answer stops at max_tokens (so every pair has a truncated side)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO, write_jsonl

from neat_data.cli import cli
from neat_data.core.manifest import read_manifest


def gate_recipe(tmp_path: Path, model: Path, url: str) -> Path:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i} of the set"} for i in range(8)])
    recipe = {
        "name": "t",
        "model": str(model),
        "out": str(tmp_path / "runs" / "t"),
        "prompts": {"source": str(prompts), "heldout": 2, "per_round": 4},
        "rounds": 1,
        "generate": {"backend": "openai", "base_url": url, "num_pos": 1, "num_neg": 1, "max_tokens": 4},
        "score": {"scorer": "python:view_runs:score_by_length"},
        "audit": {"fail_on": ["truncated", "duplicates"], "resamples": 100},
        "train": {"epochs": 1, "prompts_per_batch": 2},
        "evaluate": {"backend": "openai", "base_url": url, "max_tokens": 8},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_failing_gate_stops_the_round_before_export_and_a_changed_section_resumes_at_the_audit(
    tmp_path: Path, tiny_model: Path, fake_server, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))  # the stages import the scorer
    server = fake_server(cut_at_max_tokens=True)
    recipe, run = gate_recipe(tmp_path, tiny_model, server.url), tmp_path / "runs" / "t"
    round_1 = run / "round_01"

    stopped = CliRunner().invoke(cli, ["run", str(recipe)])
    errors = [line for line in stopped.output.splitlines() if line.startswith("error:")]
    assert stopped.exit_code == 5, stopped.output
    assert errors == [stopped.output.strip().splitlines()[-1]], stopped.output  # one line, the last
    assert errors[0] == (
        f"error: round 1 · audit: {round_1}/audit/audit.json: audit check failed: truncated = 1.000 "
        "(threshold: share of pairs with a truncated side ≤ 0.1) "
        "(recipe audit.fail_on: the round stops before its exports and training)"
    )
    report = json.loads((round_1 / "audit" / "audit.json").read_text())
    assert {c["check"]: c["verdict"] for c in report["checks"]}["truncated"] == "fail"
    assert not (round_1 / "export").exists() and not (round_1 / "model").exists()  # nothing exported, nothing trained
    record = read_manifest(run).finished_in_round(1, "audit")
    assert record["finished"] is False and record["stopped"] == errors[0].removeprefix("error: round 1 · audit: ")
    assert read_manifest(round_1).stages["audit"].summary["truncated"]["verdict"] == "fail"
    generated = len(server.requests)

    resumed = CliRunner().invoke(cli, ["run", str(recipe), "--set", "audit.fail_on=[duplicates]"])
    assert resumed.exit_code == 0, resumed.output
    for stage in ("generate", "score", "rank"):  # the stages before the audit are kept, not run again
        assert f"round 1 · {stage}: done" in resumed.output, resumed.output
    assert "round 1 · audit … " in resumed.output and "truncated: FAIL" in resumed.output
    assert (round_1 / "export" / "ranked").is_dir() and (round_1 / "model").is_dir()
    assert read_manifest(run).finished_in_round(1, "audit")["finished"] is True
    assert len([body for body in server.requests[generated:] if body.get("max_tokens") == 4]) == 0  # nothing generated again

    # the section changed on a finished round: the audit runs again, not the stages before it; now it stops there
    again = CliRunner().invoke(cli, ["run", str(recipe), "--set", "audit.fail_on=[truncated]"])
    assert again.exit_code == 5 and "round 1 · rank: done" in again.output, again.output
    assert again.output.strip().splitlines()[-1].startswith("error: round 1 · audit: "), again.output
    # and once more, passing: the audit and every stage that reads it run again
    passed = CliRunner().invoke(cli, ["run", str(recipe), "--set", "audit.fail_on=[duplicates]"])
    assert passed.exit_code == 0 and "round 1 · rank: done" in passed.output, passed.output
    for stage in ("audit", "export-ranked", "train", "evaluate"):
        assert f"round 1 · {stage} … (log:" in passed.output, passed.output
    assert "round 0 · evaluate: done" in passed.output  # the base model's evaluation reads nothing the audit changes
