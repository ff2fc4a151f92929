"""Data audit stage (pure, no engine): a ranked run → what its pairs would teach, before anyone trains on them.

In:  `<run>/ranked/{lists,pairs,dropped}.parquet` (from `neat-data rank`) and `<run>/scored/` (completion_tokens,
     finish reasons). Out: `<run>/audit/audit.json` (every figure with its definition), `<run>/audit/audit.md`,
     `<run>/audit/audit.png`, and the `audit` entry of the manifest (the verdicts: the dataset card shows them).
Run: `neat-data audit runs/demo [--fail-on length,duplicates] [--length-separability-max 0.6]`.

Checks, each a verdict line with its threshold (the config's fields below: documented defaults, each an option):
    length           max(length AUC, 1 − length AUC) ≤ 0.65 — the pairs do not teach "longer (or shorter) wins"
    bag-of-words     cross-validated AUC of a word-count logistic regression ≤ 0.75 — word choice alone does not
                     give the label away
    best-negative    share of lists (with both steerings) whose best candidate answered the negative prompt ≤ 0.5
    refusal-flip     net refusal flip rate (positive refuses & negative complies, minus the reverse) ≥ 0.05 — the
                     steering changes refusals on this model (on benign-only prompts expect it to fail: the steering
                     then shows in tone, if at all)
    duplicates       share of candidates with an exact (normalised) duplicate ≤ 0.05
    near-duplicates  share with a near-duplicate (Jaccard ≥ 0.8 on word 3-grams, exact ones excluded) ≤ 0.10
    truncated        share of pairs with a side cut at max_tokens ≤ 0.10
    ties             share of formed pairs rank dropped as score ties ≤ 0.10
A check whose figure cannot be measured (no pos/neg lists, too few pairs) is `n/a`, never a pass or a fail.
The report is written and the command exits 0 whatever the verdicts; `--fail-on CHECK,…` makes it exit 5
(`EXIT_CHECK_FAILED`) after writing when one of those checks fails — for pipelines that want to stop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.errors import EXIT_CHECK_FAILED, NeatError
from neat_data.core.files import atomic_write_bytes, atomic_write_json
from neat_data.core.manifest import update_manifest
from neat_data.core.runfolder import RunLock, ShardedTable, atomic_write_figure, count_by, read_parquet
from neat_data.core.schemas import DROPPED_PAIRS, SCORED, check_columns, one_array
from neat_data.safety.metrics import MetricName
from neat_data.stages import data_audit_duplicates as duplicates_of
from neat_data.stages import data_audit_measures as measures
from neat_data.stages.rank import read_ranked

AuditCheck = Literal["length", "bag-of-words", "best-negative", "refusal-flip", "duplicates", "near-duplicates", "truncated", "ties"]
AUDIT_CHECKS: tuple[AuditCheck, ...] = get_args(AuditCheck)
SAFETY_METRICS: tuple[MetricName, ...] = ("refusal", "offensive", "tone")  # from neat_data/safety/metrics.py, as `evaluate` computes them


class DataAuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder holding ranked/ (and scored/).")
    fail_on: list[AuditCheck] = Field(
        default_factory=list, description=f"Exit with code 5 when one of these checks fails (comma-separated: {', '.join(AUDIT_CHECKS)})."
    )
    length_separability_max: float = Field(0.65, ge=0.5, le=1.0, description="length check: max(length AUC, 1 − length AUC) at most this.")
    bag_of_words_auc_max: float = Field(0.75, ge=0.0, le=1.0, description="bag-of-words check: cross-validated AUC at most this.")
    best_negative_max: float = Field(
        0.5, ge=0.0, le=1.0, description="best-negative check: share of lists whose best answered the negative prompt, at most."
    )
    refusal_flip_min: float = Field(0.05, ge=-1.0, le=1.0, description="refusal-flip check: net refusal flip rate at least this.")
    duplicate_max: float = Field(
        0.05, ge=0.0, le=1.0, description="duplicates check: share of candidates with an exact duplicate, at most."
    )
    near_duplicate_max: float = Field(0.10, ge=0.0, le=1.0, description="near-duplicates check: share with a near-duplicate, at most.")
    near_duplicate_jaccard: float = Field(
        0.8,
        gt=0.0,
        le=0.95,  # MinHash LSH with 64 permutations has no banding (b ≥ 2) above ~0.96
        description="Jaccard similarity (word 3-grams) from which two texts are near-duplicates (at most 0.95).",
    )
    truncated_max: float = Field(
        0.10, ge=0.0, le=1.0, description="truncated check: share of pairs with a side cut at max_tokens, at most."
    )
    tie_max: float = Field(0.10, ge=0.0, le=1.0, description="ties check: share of formed pairs dropped as score ties, at most.")
    sample_prompts: int = Field(
        5000,
        ge=1,
        description="Prompts (seeded sample, all their candidates) for the per-text measures: bag of words, safety metrics, near-duplicates.",
    )
    resamples: int = Field(
        1000,
        ge=100,  # the verdicts read the interval's ends, the 2.5th and 97.5th percentiles of the draws
        description="Bootstrap resamples of each interval (at least 100).",
    )
    seed: int = Field(0, description="Seed of the sample, the bag-of-words swaps and the bootstrap.")


# check → (where its figure is in the report, "max" or "min", the config field holding the threshold, what it says)
CHECK_RULES: dict[AuditCheck, tuple[tuple[str, ...], Literal["max", "min"], str, str]] = {
    "length": (("length", "length_separability"), "max", "length_separability_max", "length separability max(AUC, 1−AUC)"),
    "bag-of-words": (("separability", "bag_of_words_auc"), "max", "bag_of_words_auc_max", "bag-of-words cross-validated AUC"),
    "best-negative": (
        ("steering", "best_is_negative"),
        "max",
        "best_negative_max",
        "share of lists whose best is a negative-prompt response",
    ),
    "refusal-flip": (("steering", "flip", "refusal", "net"), "min", "refusal_flip_min", "net refusal flip rate"),
    "duplicates": (("duplicates", "exact", "any"), "max", "duplicate_max", "share of candidates with an exact duplicate"),
    "near-duplicates": (("duplicates", "near", "any"), "max", "near_duplicate_max", "share of candidates with a near-duplicate"),
    "truncated": (("ties_and_truncation", "truncated_pairs"), "max", "truncated_max", "share of pairs with a truncated side"),
    "ties": (("ties_and_truncation", "tie_dropped_pairs"), "max", "tie_max", "share of formed pairs dropped as ties"),
}


def figure_at(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The number at `path` through sections and figures (a figure whose value is a dict is stepped into)."""
    node: Any = report
    for step in path:
        if isinstance(node, dict) and "definition" in node and isinstance(node.get("value"), dict):
            node = node["value"]
        if not isinstance(node, dict) or step not in node:
            return None
        node = node[step]
    value = node.get("value") if isinstance(node, dict) else node
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def verdicts(report: dict[str, Any], config: DataAuditConfig) -> list[dict[str, Any]]:
    out = []
    for check, (path, kind, threshold_field, what) in CHECK_RULES.items():
        value, threshold = figure_at(report, path), float(getattr(config, threshold_field))
        if value is None:
            verdict = "n/a"
        else:
            verdict = "pass" if (value <= threshold if kind == "max" else value >= threshold) else "fail"
        sign = "≤" if kind == "max" else "≥"
        shown = "not measured" if value is None else f"{value:.3f}"
        option = "--" + threshold_field.replace("_", "-")
        out.append(
            {
                "check": check,
                "verdict": verdict,
                "value": value,
                "threshold": threshold,
                "rule": f"{what} {sign} {threshold:g}",
                "line": f"{check}: {verdict.upper()} — {what} {shown} (pass when {sign} {threshold:g}; {option})",
            }
        )
    return out


@dataclass
class AuditReport:
    folder: Path
    report: dict[str, Any]
    checks: list[dict[str, Any]]
    fail_on: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [check["line"] for check in self.checks] + [f"wrote {self.folder}/audit.json, audit.md, audit.png"]

    def failed(self) -> list[str]:
        return [c["check"] for c in self.checks if c["check"] in self.fail_on and c["verdict"] == "fail"]

    def raise_for_failures(self) -> None:
        failed = self.failed()
        if failed:
            raise NeatError(
                f"audit check(s) failed: {', '.join(failed)} (--fail-on; the report is written)",
                file=self.folder / "audit.json",
                exit_code=EXIT_CHECK_FAILED,
            )


def read_inputs(run_dir: Path) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table | None]:
    """(lists, pairs, dropped, scored columns or None); no ranked lists at all is a NeatError (exit 2)."""
    lists = read_ranked(run_dir, "lists")
    if lists.num_rows == 0:
        raise NeatError(
            "no ranked lists to audit (every candidate failed, or nothing was generated)", file=run_dir / "ranked" / "lists.parquet"
        )
    pairs = read_ranked(run_dir, "pairs")
    dropped_path = run_dir / "ranked" / "dropped.parquet"
    dropped = read_parquet(dropped_path) if dropped_path.is_file() else DROPPED_PAIRS.empty_table()
    if dropped.num_rows:
        check_columns(dropped, DROPPED_PAIRS, str(dropped_path))
    scored = None
    if (run_dir / "scored").is_dir():
        scored = ShardedTable(run_dir / "scored", SCORED).read(columns=["completion_tokens", "finish_reason", "steering", "status"])
    return lists, pairs, dropped, scored


def safety_values(texts: list[str], notes: list[str]) -> dict[str, list[float]]:
    from neat_data.safety.metrics import response_metrics

    values: dict[str, list[float]] = {}
    for metric in SAFETY_METRICS:
        try:
            values.update(response_metrics([metric], texts))
        except NeatError as error:  # a metric's package is missing: say so, measure the others
            notes.append(f"{metric} not measured: {error.message}")
    return values


def audit_tables(
    config: DataAuditConfig, lists: pa.Table, pairs: pa.Table, dropped: pa.Table, scored: pa.Table | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The pure core: ranked tables → (the report: a dict of sections of figures, log2 length ratios per steering
    combination for the plot)."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    keys = one_array(scored.column("key")) if scored is not None else None
    tokens = one_array(scored.column("completion_tokens")) if scored is not None else None
    candidates = measures.flatten_lists(lists, keys, tokens)
    try:
        sides = measures.pair_sides(pairs, candidates)
    except ValueError as error:
        raise NeatError(
            f"{error} (lists.parquet and pairs.parquet from different rank runs? run `neat-data rank` again)", file="ranked/pairs.parquet"
        ) from None
    seconds["read_and_join"] = time.perf_counter() - started
    notes: list[str] = []
    prompts = len(candidates.prompt_ids)
    rng = np.random.default_rng(config.seed)
    picked = np.sort(rng.choice(prompts, size=min(prompts, config.sample_prompts), replace=False))
    sampled = "all prompts" if picked.size == prompts else f"a seeded sample of {picked.size} of {prompts} prompts"
    in_sample = np.isin(candidates.prompt, picked)
    pair_in_sample = np.isin(sides.prompt, picked)

    step = time.perf_counter()
    length = measures.length_measures(sides, candidates.length_unit, resamples=config.resamples, seed=config.seed)
    seconds["length"] = time.perf_counter() - step

    step = time.perf_counter()
    at = pa.array(np.flatnonzero(pair_in_sample))
    try:
        bag = measures.bag_of_words_auc(
            sides.chosen.take(at).to_pylist(),
            sides.rejected.take(at).to_pylist(),
            sides.prompt[pair_in_sample],
            resamples=min(config.resamples, 200),  # each resample refits nothing but recomputes an AUC: 200 suffice
            seed=config.seed,
        )
        bag["definition"] += f" ({sampled}; interval from ≤ 200 resamples)"
    except ImportError as error:
        notes.append(f"bag-of-words AUC not measured: {error} (pip install -r requirements/eval.txt)")
        bag = measures.figure(None, "bag-of-words AUC: not measured (scikit-learn missing)")
    seconds["bag_of_words"] = time.perf_counter() - step

    step = time.perf_counter()
    sample_at = pa.array(np.flatnonzero(in_sample))
    texts = [text or "" for text in candidates.responses.take(sample_at).to_pylist()]
    sample_prompt_ids = [candidates.prompt_ids[p] for p in candidates.prompt[in_sample]]
    values = safety_values(texts, notes)
    steering = measures.steering_measures(
        sample_prompt_ids, candidates.steering[in_sample].tolist(), values, resamples=config.resamples, seed=config.seed, sampled=sampled
    )
    steering.update(measures.best_candidate_measures(candidates, resamples=config.resamples, seed=config.seed))
    seconds["steering"] = time.perf_counter() - step

    step = time.perf_counter()
    normalised = duplicates_of.normalised_texts(candidates.responses.take(sample_at)).to_pylist()
    try:
        near = duplicates_of.near_duplicates(
            candidates.prompt[in_sample], normalised, threshold=config.near_duplicate_jaccard, sampled=sampled
        )
    except ImportError as error:
        notes.append(f"near-duplicates not measured: {error} (pip install -r requirements/eval.txt)")
        near = {"any": measures.figure(None, "near-duplicates: not measured (datasketch missing)")}
    duplicates = {"exact": duplicates_of.exact_duplicates(candidates), "near": near}
    seconds["duplicates"] = time.perf_counter() - step

    reasons = count_by(dropped, "reason")
    ties = measures.ties_and_truncation(candidates, sides, reasons)
    if scored is not None and scored.num_rows:
        ok = scored.filter(pc.equal(scored.column("status"), "ok"))
        cut = int(pc.sum(pc.fill_null(pc.equal(ok.column("finish_reason"), measures.TRUNCATED), False)).as_py() or 0)
        ties["truncated_generated"] = measures.figure(
            cut / ok.num_rows if ok.num_rows else None,
            "share of all ok generations (scored/) cut at max_tokens, whether or not rank kept them",
        )
    ratio = np.log2(measures.length_ratio(sides.length_chosen, sides.length_rejected))
    ratios = {str(c): ratio[sides.combination == c] for c in sorted(set(sides.combination.tolist()))}
    return {
        "counts": {
            "prompts": measures.figure(prompts, "ranked lists (one per prompt)"),
            "candidates": measures.figure(candidates.size, "ok candidates in the lists"),
            "pairs": measures.figure(sides.size, "pairs in ranked/pairs.parquet"),
            "sample": measures.figure(sampled, "the prompts the per-text measures (bag of words, safety metrics, near-duplicates) ran on"),
        },
        "length": length,
        "separability": {"length_auc": length["length_auc"], "bag_of_words_auc": bag},
        "steering": steering,
        "duplicates": duplicates,
        "ties_and_truncation": ties,
        "notes": notes,
        "seconds": {name: round(value, 2) for name, value in seconds.items()},
    }, ratios


def run_data_audit(config: DataAuditConfig, argv: list[str] | None = None) -> AuditReport:
    from neat_data.stages.data_audit_report import audit_markdown, audit_plot

    run_dir = Path(config.run)
    if not run_dir.is_dir():
        raise NeatError("no such run folder", file=run_dir)
    with RunLock(run_dir):
        lists, pairs, dropped, scored = read_inputs(run_dir)
        report, ratios = audit_tables(config, lists, pairs, dropped, scored)
        checks = verdicts(report, config)
        report = {"run": str(run_dir), "config": config.model_dump(mode="json"), "command": argv, "checks": checks, **report}
        folder = run_dir / "audit"
        atomic_write_json(folder / "audit.json", report)
        atomic_write_bytes(folder / "audit.md", audit_markdown(report).encode("utf-8"))
        atomic_write_figure(folder / "audit.png", audit_plot(report, ratios))
        summary = {c["check"]: {"verdict": c["verdict"], "value": c["value"], "rule": c["rule"]} for c in checks}
        update_manifest(run_dir, "audit", {"config": config.model_dump(mode="json"), "command": argv, "finished": True, "summary": summary})
    return AuditReport(folder, report, checks, list(config.fail_on))


def card_lines(entry: dict[str, Any]) -> list[str]:
    """The audit's verdicts as markdown lines for the dataset card (stages/push.py), from the manifest's entry."""
    summary = entry.get("summary") or {}
    if not summary:
        return []
    lines = ["", "Data audit (`neat-data audit`):", "", "| check | verdict | value | rule |", "|---|---|---|---|"]
    for check in [c for c in AUDIT_CHECKS if c in summary]:  # the manifest's JSON keeps keys sorted: the checks' own order
        item = summary[check]
        value = item.get("value")
        lines.append(f"| {check} | {item.get('verdict')} | {'–' if value is None else format(value, '.3f')} | {item.get('rule')} |")
    return lines
