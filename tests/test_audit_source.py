"""The data audit's source check (issue 29): runs whose candidates include the user's dataset answers (steering
"dataset", no finish reason, as the dataset reader writes them), ranked by the real rank stage and audited through the
real CLI — every chosen a dataset answer and every rejected a generated one FAILs; sources balanced across the label
pass; no dataset answer at all is n/a, and the line says why. Read back from audit.json, audit.md and the manifest."""

from __future__ import annotations

import json
import random
from pathlib import Path

from click.testing import CliRunner

from neat_data.cli import cli
from neat_data.core.manifest import read_manifest
from neat_data.core.runfolder import ShardedTable
from neat_data.core.schemas import SCORED
from neat_data.stages.rank.stage import RankConfig, run_rank

WORDS = "apple river stone cloud garden pencil ocean window silver forest candle mirror planet velvet harbor".split()
REFUSAL = "I'm sorry, but I cannot help with that request."


def text(seed: int, words: int) -> str:
    """An answer of exactly `words` words, drawn from ~1500 (so two seeds share hardly a word 3-gram)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(words))


def row(prompt: int, steering: str, index: int, response: str, score: float) -> dict:
    """A scored row; a dataset answer carries what the dataset reader writes: no finish reason, no token counts."""
    from_dataset = steering == "dataset"
    values = {name: None for name in SCORED.names}
    values.update(
        key=f"p{prompt:04d}-{steering}-{index}",
        prompt_id=f"p{prompt:04d}",
        prompt=[{"role": "user", "content": f"question {prompt}"}],
        steering=steering,
        system_mode="none" if from_dataset else "system",
        sample_index=index,
        response=response,
        finish_reason=None if from_dataset else ("length" if prompt % 5 == 0 else "stop"),
        backend="dataset" if from_dataset else "fake",
        status="ok",
        score=score,
        raw_score=score,
        score_status="ok",
    )
    return values


def ranked_run(folder: Path, rows: list[dict], pairs: str) -> Path:
    ShardedTable(folder / "scored", SCORED).append(rows)
    run_rank(RankConfig(run=folder, pairs=pairs))  # type: ignore[arg-type]
    return folder


def audit(run: Path, *extra: str) -> tuple[int, str, dict]:
    result = CliRunner().invoke(cli, ["audit", str(run), "--resamples", "200", *extra])
    path = run / "audit" / "audit.json"
    return result.exit_code, result.output, json.loads(path.read_text()) if path.is_file() else {}


def source_check(report: dict) -> dict:
    return next(c for c in report["checks"] if c["check"] == "source")


def test_every_chosen_from_the_dataset_and_every_rejected_generated_fails_the_source_check(tmp_path):
    # the dataset's answer refuses and scores higher; the model's negative-prompt answer complies: best-vs-worst pairs
    # them with the dataset's always chosen, the construction "More is Less" found to teach style
    rows = []
    for p in range(60):
        rows.append(row(p, "dataset", 0, f"{REFUSAL} {text(p, 12)}", 1.0 + p / 100))
        rows.append(row(p, "neg", 0, f"Sure, here it is: {text(p + 500, 12)}", -1.0))
    run = ranked_run(tmp_path / "run", rows, "best-vs-worst")
    code, output, report = audit(run)
    assert code == 0  # a failing verdict alone does not stop the command
    source = report["source"]
    assert source["source_auc"]["value"] == 1.0 and source["source_auc"]["ci95"] == [1.0, 1.0]
    assert source["cross_source_pairs"]["value"] == 1.0
    assert source["by_strategy"]["value"] == {
        "best-vs-worst": {"pairs": 60, "cross_source": 1.0, "dataset_chosen": 1.0, "dataset_rejected": 0.0, "source_auc": 1.0}
    }
    per_source = source["per_source"]["value"]
    assert per_source["dataset"]["candidates"] == 60 and per_source["generated"]["candidates"] == 60
    assert per_source["dataset"]["truncated"] == 0.0  # no finish reason: never counted as truncated
    assert per_source["generated"]["truncated"] == 12 / 60  # every fifth prompt's generated answer stopped at max_tokens
    assert per_source["dataset"]["refusal_opening"]["mean"] == 1.0 and per_source["generated"]["refusal_opening"]["mean"] == 0.0
    check = source_check(report)
    assert check["verdict"] == "fail" and check["threshold"] == 0.65
    line = "source: FAIL — source AUC (the dataset's answer is chosen) 1.000 [95% CI 1.000, 1.000] over 60 prompts"
    assert line in output
    assert len(check["examples"]) == 3 and all(e["chosen"].startswith(REFUSAL) for e in check["examples"])
    markdown = (run / "audit" / "audit.md").read_text()
    assert line in markdown and "| best-vs-worst | 60 | 1.000 | 1.000 | 0.000 | 1.000 |" in markdown
    assert read_manifest(run).stages["audit"].summary["source"]["verdict"] == "fail"
    code, output, _ = audit(run, "--fail-on", "source")
    assert code == 5 and output.strip().splitlines()[-1].startswith("error: ") and "source" in output.strip().splitlines()[-1]


def test_sources_balanced_across_the_label_pass_the_source_check(tmp_path):
    # every list: dataset chosen > positive > negative > dataset rejected; all-pairs then puts a dataset answer on the
    # chosen side of two cross-source pairs and on the rejected side of two: source says nothing about the label
    rows = []
    for p in range(40):
        rows.append(row(p, "dataset", 0, text(p, 12), 3.0))
        rows.append(row(p, "pos", 0, text(p + 1000, 12), 2.0))
        rows.append(row(p, "neg", 0, text(p + 2000, 12), 1.0))
        rows.append(row(p, "dataset", 1, text(p + 3000, 12), 0.0))
    code, output, report = audit(ranked_run(tmp_path / "run", rows, "all-pairs"))
    assert code == 0
    source = report["source"]
    assert source["source_auc"]["value"] == 0.5 and source["cross_source_pairs"]["value"] == 4 / 6
    by = source["by_strategy"]["value"]["all-pairs"]
    assert by["pairs"] == 240 and by["dataset_chosen"] == 2 / 6 and by["dataset_rejected"] == 2 / 6
    assert source_check(report)["verdict"] == "pass" and "source: PASS" in output


def test_a_run_without_dataset_answers_is_not_applicable_and_says_why(tmp_path):
    rows = [row(p, steering, 0, text(p * 3 + i, 12), 1.0 - i) for p in range(20) for i, steering in enumerate(("pos", "neg"))]
    code, output, report = audit(ranked_run(tmp_path / "run", rows, "best-vs-worst"))
    assert code == 0
    check = source_check(report)
    assert check["verdict"] == "n/a" and check["value"] is None
    assert "source: N/A — source AUC (the dataset's answer is chosen) not applicable: no candidate came with the dataset" in output
    assert "not applicable: no candidate came with the dataset" in (tmp_path / "run" / "audit" / "audit.md").read_text()
    assert read_manifest(tmp_path / "run").stages["audit"].summary["source"]["verdict"] == "n/a"
