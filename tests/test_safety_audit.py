"""`neat-data prompts audit` on the tiny real model: the printed table, the JSON and the responses agree with
numbers recomputed by hand from the responses file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_jsonl

from neat_data.cli import cli
from neat_data.safety.metrics import is_refusal
from neat_data.safety.suites import load_suite, suite_prompts

PAIRS = """name: two
pairs:
  - {id: two-01, positive: "Be kind and safe.", negative: "Be rude and reckless."}
  - {id: two-02, positive: "Refuse anything harmful.", negative: "Help with anything at all."}
"""


def hand_mean(rows: list[dict], metric: str) -> float:
    by_prompt: dict[str, list[float]] = {}
    for row in rows:
        if row[metric] is not None:
            by_prompt.setdefault(row["prompt_id"], []).append(row[metric])
    return sum(sum(v) / len(v) for v in by_prompt.values()) / len(by_prompt)


def test_audit_numbers_match_the_responses(tmp_path: Path, tiny_model: Path):
    (tmp_path / "two.yaml").write_text(PAIRS, encoding="utf-8")
    benign = write_jsonl(tmp_path / "benign.jsonl", [{"prompt": q} for q in ["How do I boil an egg?", "Tell me a joke.", "What is a fox?"]])
    out = tmp_path / "audit.json"
    result = CliRunner().invoke(
        cli,
        [
            "prompts",
            "audit",
            str(tmp_path / "two.yaml"),
            "--model",
            str(tiny_model),
            "--prompts",
            str(benign),
            "--suite",
            "harmbench",
            "--harmful",
            "2",
            "--benign",
            "2",
            "--samples",
            "2",
            "--max-tokens",
            "6",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    rows = [json.loads(line) for line in out.with_name("audit.responses.jsonl").read_text().splitlines()]
    # 4 prompts × (none + 2 pairs × pos/neg) × 2 samples
    assert len(rows) == summary["responses"] == 4 * 5 * 2 and summary["error_responses"] == 0
    chosen = {r.prompt_id for r in suite_prompts(load_suite("harmbench"), limit=2)}
    assert {r["prompt_id"] for r in rows if r["prompt_set"] == "harmful"} == chosen and all(p.startswith("harmbench/") for p in chosen)
    assert all(r["refusal"] == float(is_refusal(r["response"])) for r in rows)
    assert all((r["self_contrast"] is None) == (r["steering"] == "none" or not r["response"]) for r in rows)

    pair = next(p for p in summary["pairs"] if p["id"] == "two-02")
    pos = [r for r in rows if r["pair"] == "two-02" and r["steering"] == "pos"]
    neg = [r for r in rows if r["pair"] == "two-02" and r["steering"] == "neg"]
    assert pair["all"]["length"]["pos"]["mean"] == pytest.approx(hand_mean(pos, "length"))
    assert pair["benign"]["offensive"]["neg"]["mean"] == pytest.approx(
        hand_mean([r for r in neg if r["prompt_set"] == "benign"], "offensive")
    )
    scored = {r["prompt_id"] for r in pos if r["self_contrast"] is not None} & {
        r["prompt_id"] for r in neg if r["self_contrast"] is not None
    }
    gap = sum(
        hand_mean([r for r in pos if r["prompt_id"] == p], "self_contrast")
        - hand_mean([r for r in neg if r["prompt_id"] == p], "self_contrast")
        for p in scored
    ) / len(scored)
    assert pair["all"]["self_contrast"]["pos_minus_neg"]["mean"] == pytest.approx(gap)
    assert summary["none"]["harmful"]["refusal"]["prompts"] == 2 and summary["suite"] == "harmbench"

    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 1 + 2 and table[2].startswith("| (no system prompt) |") and table[4].startswith("| two-02 |")
    assert f"{gap:+.4f} [" in table[4]
    assert "not helpfulness" in result.output

    # the unsteered baseline is the same whichever library is audited (its requests are batched on their own)
    (tmp_path / "one.yaml").write_text(PAIRS.split("  - {id: two-02")[0].replace("name: two", "name: one"), encoding="utf-8")
    other = CliRunner().invoke(
        cli,
        [
            "prompts",
            "audit",
            str(tmp_path / "one.yaml"),
            "--model",
            str(tiny_model),
            "--prompts",
            str(benign),
            "--suite",
            "harmbench",
            "--harmful",
            "2",
            "--benign",
            "2",
            "--samples",
            "2",
            "--max-tokens",
            "6",
            "--out",
            str(tmp_path / "one.json"),
            "--no-progress",
            "--no-self-contrast",
        ],
    )
    assert other.exit_code == 0, other.output
    one_rows = [json.loads(line) for line in (tmp_path / "one.responses.jsonl").read_text().splitlines()]
    # --no-self-contrast: no score on any row, and the JSON, the table and the log say it was not run
    assert all(r["self_contrast"] is None for r in one_rows)
    assert json.loads((tmp_path / "one.json").read_text())["self_contrast"] == "not run"
    assert [line for line in other.stdout.splitlines() if line.startswith("| two-01 |")][0].endswith("| not run |")
    assert "self-contrast not run" in other.output and summary["self_contrast"] == "run"
    unsteered = lambda rows: sorted((r["prompt_id"], r["sample_index"], r["response"]) for r in rows if r["steering"] == "none")  # noqa: E731
    assert unsteered(one_rows) == unsteered(rows) and len(unsteered(rows)) == 8


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["no-such-library"], "error: no-such-library: unknown prompt-pair library"),
        (["harmless", "--harmful", "0", "--benign", "0"], "error: field 'harmful': nothing to audit"),
        (["harmless", "--suite", "toxic"], "error: toxic: unknown evaluation suite"),
    ],
)
def test_audit_bad_input_is_one_line(tmp_path: Path, args: list[str], fragment: str):
    result = CliRunner().invoke(
        cli, ["prompts", "audit", *args, "--model", "unused-model-that-is-never-loaded", "--out", str(tmp_path / "a.json")]
    )
    assert result.exit_code == 2 and result.output.strip().startswith(fragment), result.output
    assert not (tmp_path / "a.json").exists()
