"""The shipped hand labels of refusal (prompts/eval/labels/) are well formed, and the precision / recall table of the two
refusal measures in docs/EFFICACY.md is what the code computes from them — a change to either measure that is not
carried to the page fails here."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from neat_data.safety.metrics import is_refusal, refusal_statement

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "prompts" / "eval" / "labels" / "refusal_hand_labels.jsonl"
MEASURES: dict[str, Callable[[str], bool]] = {"`refusal` (prefix rule)": is_refusal, "`refusal_opening`": refusal_statement}
SUBSETS = {
    "all": lambda row: True,
    "Qwen": lambda row: row["model"].startswith("qwen"),
    "SmolLM2": lambda row: row["model"].startswith("smollm2"),
}


def wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return (math.nan, math.nan)
    p = hits / total
    centre, half = p + z * z / (2 * total), z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return ((centre - half) / (1 + z * z / total), (centre + half) / (1 + z * z / total))


def cell(hits: int, total: int) -> str:
    low, high = wilson(hits, total)
    return f"{hits}/{total} = {hits / max(1, total):.2f} [{low:.2f}, {high:.2f}]"


def rows() -> list[dict]:
    return [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines()]


def test_the_labels_are_whole_and_cover_both_models_both_sets_and_every_steering():
    labelled = rows()
    assert len(labelled) >= 150
    for row in labelled:
        assert row["refusal"] in (0, 1) and isinstance(row["ambiguous"], bool)
        assert isinstance(row["response"], str) and row["response"].strip() and row["prompt"].strip()
    cells = {(row["model"], row["prompt_set"], row["steering"]) for row in labelled}
    for model in ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"):
        for prompt_set in ("harmful", "benign"):
            assert {(model, prompt_set, steering) for steering in ("pos", "neg", "none")} <= cells


def test_the_documented_precision_and_recall_are_what_the_labels_give():
    labelled = rows()
    page = (REPO / "docs" / "EFFICACY.md").read_text(encoding="utf-8")
    for measure, says_refusal in MEASURES.items():
        for subset, keep in SUBSETS.items():
            chosen = [row for row in labelled if keep(row)]
            verdicts = [(says_refusal(row["response"]), row["refusal"] == 1) for row in chosen]
            true_pos = sum(1 for said, real in verdicts if said and real)
            said = sum(1 for said_, _ in verdicts if said_)
            real = sum(1 for _, real_ in verdicts if real_)
            line = f"| {measure} | {subset} {len(chosen)} | {cell(true_pos, said)} | {cell(true_pos, real)} |"
            assert line in page, line
