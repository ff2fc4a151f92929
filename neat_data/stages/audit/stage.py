"""Data audit stage (pure, no engine): a ranked run → what its pairs would teach, before anyone trains on them.

In:  `<run>/ranked/{lists,pairs,dropped}.parquet` (from `neat-data rank`) and `<run>/scored/` (completion_tokens,
     finish reasons). Out: `<run>/audit/audit.json` (every figure with its definition), `<run>/audit/audit.md`,
     `<run>/audit/audit.png`, and the `audit` entry of the manifest (the verdicts: the dataset card shows them).
Run: `neat-data audit runs/demo [--fail-on length,duplicates] [--length-separability-max 0.6]`.

Checks, each a verdict line with its threshold (the config's fields below: documented defaults, each an option):
    length           length AUC within [0.35, 0.65] (max(AUC, 1 − AUC) ≤ 0.65) — the pairs do not teach "longer (or
                     shorter) wins"
    bag-of-words     length-matched cross-validated AUC of a logistic regression on the word 1–3-grams each side
                     contains ≤ 0.75 — word choice alone, length held equal, does not give the label away (the raw AUC
                     and the most separating n-grams with their counts are reported beside it)
    best-negative    share of lists (with both steerings) whose best candidate answered the negative prompt, minus what
                     a steering-blind scorer gives (each list's share of negative candidates), ≤ 0.10
    refusal-flip     net refusal flip rate (positive refuses & negative complies, minus the reverse) ≥ 0.05, refusals
                     by `refusal_opening` (neat_data/safety/metrics.py; the HarmBench prefix rule's figure beside it) —
                     the steering changes refusals on this model (on benign-only prompts expect it to fail: the
                     steering then shows in tone, if at all)
    duplicates       share of candidates with an exact (normalised) duplicate ≤ 0.05
    near-duplicates  share with a near-duplicate (Jaccard ≥ 0.8 on word 3-grams, punctuation and case ignored, exact
                     ones excluded) ≤ 0.10
    truncated        share of pairs with a side cut at max_tokens ≤ 0.10
    ties             share of formed pairs rank dropped as score ties ≤ 0.10
    source           source AUC within [0.35, 0.65]: P(the chosen side is the dataset's answer and the rejected one the
                     model's) + ½ P(same source) — the pairs do not teach "who wrote it" ("More is Less", arXiv
                     2504.02193); `n/a` when no candidate came with the dataset (steering "dataset")
Verdicts have three states. A figure with a 95% interval (length, bag-of-words, best-negative, refusal-flip, source: estimates
from a sample of prompts) passes when the whole interval is on the passing side of the threshold, FAILs when the whole
interval is on the failing side, and is NOT SURE when the interval holds the threshold — its line then says about how
many prompts would decide it (the interval's half-width shrinks as 1/√prompts). The other figures are counts over every
candidate or pair (near-duplicates: over the sample) and are read as they are. Each failing check's entry carries
three example pairs (or texts) that show it. A check whose figure cannot be measured (no pos/neg lists, too few pairs)
is `n/a`, never a pass or a fail.
The report is written and the command exits 0 whatever the verdicts; `--fail-on CHECK,…` makes it exit 5
(`EXIT_CHECK_FAILED`) after writing when one of those checks FAILs (not sure and n/a go on), with one line naming each
such check, its figure and its threshold. In `neat-data run` it is the stage between rank and the exports, set by the
recipe's `audit:` section (`fail_on` and the thresholds below): a FAIL there stops the round before its exports and
training (neat_data/rounds/stages.py).
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

from neat_data.core import layout
from neat_data.core.errors import EXIT_CHECK_FAILED, NeatError
from neat_data.core.lineage import check_read, require_current
from neat_data.core.manifest import MANIFEST, AuditRecord, manifest_record, read_manifest
from neat_data.core.runfolder import RunLock, StagedWrites, count_by, figure_png, read_parquet
from neat_data.core.schemas import DROPPED_PAIRS, check_columns, is_truncated, one_array
from neat_data.core.stage import Stage, StageResult
from neat_data.safety.metrics import MetricName
from neat_data.stages.audit import duplicates as duplicates_of
from neat_data.stages.audit import measures as measures
from neat_data.stages.rank.stage import read_ranked

Verdict = Literal["pass", "fail", "not sure", "n/a"]
AuditCheck = Literal[
    "length", "bag-of-words", "best-negative", "refusal-flip", "duplicates", "near-duplicates", "truncated", "ties", "source"
]
AUDIT_CHECKS: tuple[AuditCheck, ...] = get_args(AuditCheck)
SAFETY_METRICS: tuple[MetricName, ...] = (
    "refusal_opening",
    "refusal",
    "offensive",
    "tone",
)  # from neat_data/safety/metrics.py, as `evaluate` computes them


class DataAuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder holding ranked/ (and scored/).")
    fail_on: list[AuditCheck] = Field(
        default_factory=list, description=f"Exit with code 5 when one of these checks fails (comma-separated: {', '.join(AUDIT_CHECKS)})."
    )
    length_separability_max: float = Field(0.65, ge=0.5, le=1.0, description="length check: max(length AUC, 1 − length AUC) at most this.")
    bag_of_words_auc_max: float = Field(
        0.75, ge=0.0, le=1.0, description="bag-of-words check: length-matched cross-validated AUC at most this."
    )
    best_negative_max: float = Field(
        0.1,
        ge=-1.0,
        le=1.0,
        description="best-negative check: share of lists whose best answered the negative prompt, above a steering-blind scorer's, at most.",
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
    source_separability_max: float = Field(
        0.65, ge=0.5, le=1.0, description="source check: max(source AUC, 1 − source AUC) at most this (dataset answers vs generated)."
    )
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


# check → (where its figure is in the report, "max", "min" or "band" (1 − threshold ≤ figure ≤ threshold), the config
# field holding the threshold, what it says)
CHECK_RULES: dict[AuditCheck, tuple[tuple[str, ...], Literal["max", "min", "band"], str, str]] = {
    "length": (("length", "length_auc"), "band", "length_separability_max", "length AUC"),
    "bag-of-words": (("separability", "bag_of_words_auc"), "max", "bag_of_words_auc_max", "length-matched bag-of-words AUC"),
    "best-negative": (
        ("steering", "best_is_negative_excess"),
        "max",
        "best_negative_max",
        "share of lists whose best is a negative-prompt response, above chance",
    ),
    "refusal-flip": (
        ("steering", "flip", "refusal_opening", "net"),
        "min",
        "refusal_flip_min",
        "net refusal flip rate (refusal_opening)",
    ),
    "duplicates": (("duplicates", "exact", "any"), "max", "duplicate_max", "share of candidates with an exact duplicate"),
    "near-duplicates": (("duplicates", "near", "any"), "max", "near_duplicate_max", "share of candidates with a near-duplicate"),
    "truncated": (("ties_and_truncation", "truncated_pairs"), "max", "truncated_max", "share of pairs with a truncated side"),
    "ties": (("ties_and_truncation", "tie_dropped_pairs"), "max", "tie_max", "share of formed pairs dropped as ties"),
    "source": (("source", "source_auc"), "band", "source_separability_max", "source AUC (the dataset's answer is chosen)"),
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def figure_at(report: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The figure at `path` through sections and figures (a figure whose value is a dict is stepped into)."""
    node: Any = report
    for step in path:
        if isinstance(node, dict) and "definition" in node and isinstance(node.get("value"), dict):
            node = node["value"]
        if not isinstance(node, dict) or step not in node:
            return None
        node = node[step]
    return node if isinstance(node, dict) else {"value": node}


def decide(value: float | None, low: float | None, high: float | None, kind: str, threshold: float) -> Verdict:
    """pass / fail / not sure from the interval [low, high] (the point alone when there is none); n/a without a value."""
    if value is None:
        return "n/a"
    if low is None or high is None:
        low = high = value
    if kind == "max":
        return "pass" if high <= threshold else "fail" if low > threshold else "not sure"
    if kind == "min":
        return "pass" if low >= threshold else "fail" if high < threshold else "not sure"
    floor = 1.0 - threshold  # "band": floor ≤ figure ≤ threshold
    return "pass" if floor <= low and high <= threshold else "fail" if low > threshold or high < floor else "not sure"


def prompts_to_decide(value: float, low: float, high: float, prompts: int, kind: str, threshold: float) -> int | None:
    """About how many prompts would make the interval clear the threshold, were the figure to stay where it is: the
    half-width shrinks as 1/√prompts. None when the figure sits on the threshold."""
    edges = [threshold, 1.0 - threshold] if kind == "band" else [threshold]
    distance = min(abs(value - edge) for edge in edges)
    if distance <= 1e-12 or prompts <= 0:
        return None
    return max(math.ceil(prompts * ((high - low) / 2 / distance) ** 2), prompts + 1)


def verdicts(report: dict[str, Any], config: DataAuditConfig) -> list[dict[str, Any]]:
    out = []
    examples = report.get("examples") or {}
    for check, (path, kind, threshold_field, what) in CHECK_RULES.items():
        item, threshold = figure_at(report, path) or {}, float(getattr(config, threshold_field))
        value = _number(item.get("value"))
        low, high = [_number(end) for end in (item.get("ci95") or [None, None])]
        prompts = item.get("prompts")
        verdict = decide(value, low, high, kind, threshold)
        bound = f"within [{1 - threshold:g}, {threshold:g}]" if kind == "band" else f"{'≤' if kind == 'max' else '≥'} {threshold:g}"
        rule = f"{what} {bound}"
        if value is None:
            shown = str(item.get("not_measured", "not measured"))
        elif low is None or high is None:
            shown = f"{value:.3f}"
        else:
            shown = f"{value:.3f} [95% CI {low:.3f}, {high:.3f}] over {prompts} prompts"
        option = "--" + threshold_field.replace("_", "-")
        line = f"{check}: {verdict.upper()} — {what} {shown} (pass when {bound}; {option})"
        entry: dict[str, Any] = {
            "check": check,
            "verdict": verdict,
            "value": value,
            "ci95": [low, high],
            "threshold": threshold,
            "rule": rule,
        }
        if verdict == "not sure" and value is not None and low is not None and high is not None:
            needed = prompts_to_decide(value, low, high, int(prompts or 0), kind, threshold)
            entry["prompts_to_decide"] = needed
            line += (
                f"; the interval holds the threshold: about {needed} prompts would decide it"
                if needed is not None
                else "; the figure sits on the threshold: no sample size decides it"
            )
        entry["line"] = line
        if verdict == "fail":
            entry["examples"] = examples.get(check, [])
        out.append(entry)
    return out


@dataclass
class AuditReport:
    folder: Path
    report: dict[str, Any]
    checks: list[dict[str, Any]]
    fail_on: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [check["line"] for check in self.checks] + [f"wrote {layout.AUDIT_JSON.path(self.folder.parent)}, audit.md, audit.png"]

    def raise_for_failures(self, stops: str = "--fail-on; the report is written") -> None:
        """Exit 5 when a check named in fail_on FAILs (pass and not sure go on): one line with each such check, its
        figure and its threshold; `stops` says what named it and what stops."""
        failed = [c for c in self.checks if c["check"] in self.fail_on and c["verdict"] == "fail"]
        if failed:
            raise NeatError(
                f"audit check{'s' if len(failed) > 1 else ''} failed: {'; '.join(_figure_against_rule(c) for c in failed)} ({stops})",
                file=layout.AUDIT_JSON.path(self.folder.parent),
                exit_code=EXIT_CHECK_FAILED,
            )


def _figure_against_rule(check: dict[str, Any]) -> str:
    """`truncated = 1.000 (threshold: share of pairs with a truncated side ≤ 0.1)`, with the interval where there is one."""
    low, high = check["ci95"]
    interval = f" [95% CI {low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{check['check']} = {check['value']:.3f}{interval} (threshold: {check['rule']})"


def read_inputs(run_dir: Path, seen: dict[str, str] | None = None) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table | None]:
    """(lists, pairs, dropped, scored columns or None); no ranked lists at all is a NeatError (exit 2). The ranked
    tables must be finished and current, from scores that are (core/lineage.py): `seen` gets the digests of what was
    read. scored/ gives only lengths and finish reasons here: rank's record vouches for it."""
    manifest = require_current(run_dir, layout.RANKED_LISTS)
    seen = seen if seen is not None else {}
    lists = read_ranked(run_dir, "lists")
    seen[layout.RANKED_LISTS.name] = check_read(run_dir, layout.RANKED_LISTS, lists, manifest)
    if lists.num_rows == 0:
        raise NeatError(
            "no ranked lists to audit (every candidate failed, or nothing was generated)", file=layout.RANKED_LISTS.path(run_dir)
        )
    pairs = read_ranked(run_dir, "pairs")
    seen[layout.RANKED_PAIRS.name] = check_read(run_dir, layout.RANKED_PAIRS, pairs, manifest)
    dropped_path = layout.RANKED_DROPPED.path(run_dir)
    dropped = read_parquet(dropped_path) if dropped_path.is_file() else DROPPED_PAIRS.empty_table()
    if dropped.num_rows:
        check_columns(dropped, DROPPED_PAIRS, str(dropped_path))
    if dropped_path.is_file():
        seen[layout.RANKED_DROPPED.name] = check_read(run_dir, layout.RANKED_DROPPED, dropped, manifest)
    scored = None
    if layout.SCORED.path(run_dir).is_dir():
        scored = layout.SCORED.rows(run_dir).read(columns=["completion_tokens", "finish_reason", "steering", "status"])
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
    config: DataAuditConfig,
    lists: pa.Table,
    pairs: pa.Table,
    dropped: pa.Table,
    scored: pa.Table | None,
    strategy: str = "pairs",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The pure core: ranked tables → (the report: a dict of sections of figures, log2 length ratios per steering
    combination for the plot). `strategy`: the pair strategy rank ran, for pairs without a `strategy` column."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    keys = one_array(scored.column("key")) if scored is not None else None
    tokens = one_array(scored.column("completion_tokens")) if scored is not None else None
    candidates = measures.flatten_lists(lists, keys, tokens)
    try:
        sides = measures.pair_sides(pairs, candidates)
    except ValueError as error:
        raise NeatError(
            f"{error} (lists.parquet and pairs.parquet from different rank runs? run `neat-data rank` again)", file=layout.RANKED_PAIRS.file
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
    pairs_at = np.flatnonzero(pair_in_sample)
    at = pa.array(pairs_at)
    try:
        bag, bag_raw, ngrams, bag_examples = measures.word_separability(
            sides.chosen.take(at).to_pylist(),
            sides.rejected.take(at).to_pylist(),
            sides.length_chosen[pair_in_sample],
            sides.length_rejected[pair_in_sample],
            sides.prompt[pair_in_sample],
            resamples=min(config.resamples, 200),  # each resample refits nothing but recomputes an AUC: 200 suffice
            seed=config.seed,
        )
        for item in (bag, bag_raw, ngrams):
            item["definition"] += f" ({sampled}; interval from ≤ 200 resamples)" if "ci95" in item else f" ({sampled})"
    except ImportError as error:
        notes.append(f"bag-of-words AUC not measured: {error} (pip install -r requirements/eval.txt)")
        bag = measures.figure(None, "bag-of-words AUC: not measured (scikit-learn missing)")
        bag_raw, ngrams, bag_examples = dict(bag), measures.figure([], bag["definition"]), []
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
    normalised = duplicates_of.normalised_texts(candidates.responses.take(sample_at))
    near_examples: list[tuple[int, int, float]] = []
    try:
        near, near_examples = duplicates_of.near_duplicates(
            candidates.prompt[in_sample],
            normalised.to_pylist(),
            duplicates_of.word_texts(normalised).to_pylist(),
            threshold=config.near_duplicate_jaccard,
            sampled=sampled,
        )
    except ImportError as error:
        notes.append(f"near-duplicates not measured: {error} (pip install -r requirements/eval.txt)")
        near = {"any": measures.figure(None, "near-duplicates: not measured (datasketch missing)")}
    exact, exact_examples = duplicates_of.exact_duplicates(candidates)
    duplicates = {"exact": exact, "near": near}
    seconds["duplicates"] = time.perf_counter() - step

    step = time.perf_counter()
    strategies = (
        np.asarray(pc.fill_null(pairs.column("strategy"), strategy).to_numpy(zero_copy_only=False), dtype=object)
        if "strategy" in pairs.column_names
        else np.full(sides.size, strategy, dtype=object)
    )
    refusal = np.asarray(values["refusal_opening"], dtype=np.float64) if "refusal_opening" in values else None
    source = measures.source_measures(
        candidates,
        sides,
        strategies,
        refusal,
        np.flatnonzero(in_sample),
        resamples=config.resamples,
        seed=config.seed,
        sampled=sampled,
    )
    seconds["source"] = time.perf_counter() - step

    reasons = count_by(dropped, "reason")
    ties = measures.ties_and_truncation(candidates, sides, reasons)
    if scored is not None and scored.num_rows:
        ok = scored.filter(pc.equal(scored.column("status"), "ok"))
        cut = int(pc.sum(is_truncated(ok.column("finish_reason"))).as_py() or 0)
        ties["truncated_generated"] = measures.figure(
            cut / ok.num_rows if ok.num_rows else None,
            "share of all ok generations (scored/) cut at max_tokens, whether or not rank kept them",
        )
    ratio = np.log2(measures.length_ratio(sides.length_chosen, sides.length_rejected))
    ratios = {str(c): ratio[sides.combination == c] for c in sorted(set(sides.combination.tolist()))}
    sample_candidates = np.flatnonzero(in_sample)
    shows = Examples(candidates, sides, dropped)
    examples = {
        "length": shows.length(ratio, length["length_auc"]["value"]),
        "bag-of-words": shows.ngram(pairs_at[bag_examples], ngrams["value"][0] if ngrams["value"] else None),
        "best-negative": shows.negative_best(),
        "refusal-flip": shows.no_flip(pairs_at),
        "duplicates": shows.texts([(i, j, "the same text up to case and whitespace") for i, j in exact_examples]),
        "near-duplicates": shows.texts(
            [(int(sample_candidates[i]), int(sample_candidates[j]), f"Jaccard {x:.2f}") for i, j, x in near_examples]
        ),
        "truncated": shows.truncated(),
        "ties": shows.ties(),
        "source": shows.source(source["source_auc"]["value"]),
    }
    return {
        "counts": {
            "prompts": measures.figure(prompts, "ranked lists (one per prompt)"),
            "candidates": measures.figure(candidates.size, "ok candidates in the lists"),
            "pairs": measures.figure(sides.size, f"pairs in {layout.RANKED_PAIRS.file}"),
            "sample": measures.figure(sampled, "the prompts the per-text measures (bag of words, safety metrics, near-duplicates) ran on"),
        },
        "length": length,
        "separability": {
            "length_auc": length["length_auc"],
            "bag_of_words_auc": bag,
            "bag_of_words_auc_raw": bag_raw,
            "separating_ngrams": ngrams,
        },
        "steering": steering,
        "duplicates": duplicates,
        "ties_and_truncation": ties,
        "source": source,
        "examples": examples,
        "notes": notes,
        "seconds": {name: round(value, 2) for name, value in seconds.items()},
    }, ratios


EXAMPLE_CHARACTERS = 300


def _clip(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= EXAMPLE_CHARACTERS else text[:EXAMPLE_CHARACTERS] + "…"


@dataclass
class Examples:
    """Up to three pairs (or texts) showing what each check measures, for the report of a failing check."""

    candidates: measures.Candidates
    sides: measures.PairSides
    dropped: pa.Table

    def pair(self, at: int, note: str) -> dict[str, Any]:
        return {
            "prompt_id": self.candidates.prompt_ids[int(self.sides.prompt[at])],
            "chosen": _clip(self.sides.chosen[at].as_py()),
            "rejected": _clip(self.sides.rejected[at].as_py()),
            "note": note,
        }

    def length(self, log2_ratio: np.ndarray, auc: float | None) -> list[dict[str, Any]]:
        if auc is None:
            return []
        order = np.argsort(-log2_ratio if auc >= 0.5 else log2_ratio, kind="stable")[:3]
        unit = self.candidates.length_unit
        return [
            self.pair(int(i), f"chosen {self.sides.length_chosen[i]:g} {unit}, rejected {self.sides.length_rejected[i]:g} {unit}")
            for i in order
        ]

    def ngram(self, pairs_at: np.ndarray, top: dict[str, Any] | None) -> list[dict[str, Any]]:
        if top is None:
            return []
        side = "chosen" if top["chosen_only"] > top["rejected_only"] else "rejected"
        return [self.pair(int(i), f"'{top['ngram']}' in the {side} side only") for i in pairs_at]

    def negative_best(self) -> list[dict[str, Any]]:
        at = np.flatnonzero(self.sides.combination == "neg>pos")[:3]
        return [self.pair(int(i), "chosen answered the negative prompt, rejected the positive one") for i in at]

    def no_flip(self, pairs_at: np.ndarray) -> list[dict[str, Any]]:
        from neat_data.safety.metrics import refusal_statement

        shown = []
        for i in pairs_at[np.isin(self.sides.combination[pairs_at], ["pos>neg", "neg>pos"])][:200]:
            refuses = [
                refusal_statement(self.sides.chosen[int(i)].as_py() or ""),
                refusal_statement(self.sides.rejected[int(i)].as_py() or ""),
            ]
            pos_refuses, neg_refuses = refuses if self.sides.combination[i] == "pos>neg" else refuses[::-1]
            if not (pos_refuses and not neg_refuses):
                shown.append(
                    self.pair(
                        int(i),
                        f"{self.sides.combination[i]}: positive {'refuses' if pos_refuses else 'complies'}, "
                        f"negative {'refuses' if neg_refuses else 'complies'} (refusal_opening)",
                    )
                )
            if len(shown) == 3:
                break
        return shown

    def texts(self, found: list[tuple[int, int, str]]) -> list[dict[str, Any]]:
        ids, responses = self.candidates.prompt_ids, self.candidates.responses
        return [
            {
                "prompt_id": f"{ids[int(self.candidates.prompt[i])]} / {ids[int(self.candidates.prompt[j])]}",
                "first": _clip(responses[i].as_py()),
                "second": _clip(responses[j].as_py()),
                "note": note,
            }
            for i, j, note in found[:3]
        ]

    def truncated(self) -> list[dict[str, Any]]:
        either = self.sides.truncated_chosen | self.sides.truncated_rejected
        return [
            self.pair(
                int(i),
                "cut at max_tokens: "
                + " and ".join(
                    side
                    for side, cut in (("chosen", self.sides.truncated_chosen[i]), ("rejected", self.sides.truncated_rejected[i]))
                    if cut
                ),
            )
            for i in np.flatnonzero(either)[:3]
        ]

    def source(self, auc: float | None) -> list[dict[str, Any]]:
        if auc is None:
            return []
        winner, loser = (
            (self.sides.dataset_chosen, self.sides.dataset_rejected)
            if auc >= 0.5
            else (self.sides.dataset_rejected, self.sides.dataset_chosen)
        )
        note = (
            "chosen came with the dataset, rejected from the model"
            if auc >= 0.5
            else "chosen from the model, rejected came with the dataset"
        )
        return [self.pair(int(i), note) for i in np.flatnonzero(winner & ~loser)[:3]]

    def ties(self) -> list[dict[str, Any]]:
        tied = self.dropped.filter(pc.equal(self.dropped.column("reason"), "tie")).slice(0, 3)
        if not tied.num_rows:
            return []
        chosen = pc.index_in(tied.column("key_chosen"), value_set=self.candidates.keys).to_pylist()
        rejected = pc.index_in(tied.column("key_rejected"), value_set=self.candidates.keys).to_pylist()
        scores = tied.column("score_chosen").to_pylist()
        return self.texts(
            [
                (i, j, f"both scored {score:g}; rank dropped the pair")
                for i, j, score in zip(chosen, rejected, scores)
                if i is not None and j is not None
            ]
        )


def run_data_audit(config: DataAuditConfig, argv: list[str] | None = None) -> AuditReport:
    from neat_data.stages.audit.report import audit_markdown, audit_plot

    run_dir = Path(config.run)
    if not run_dir.is_dir():
        raise NeatError("no such run folder", file=run_dir)
    with RunLock(run_dir):
        manifest = read_manifest(run_dir)  # every input is read and checked before anything is written
        seen: dict[str, str] = {}
        lists, pairs, dropped, scored = read_inputs(run_dir, seen)
        strategy = manifest.stage("rank").config.get("pairs", "pairs")  # pairs without a strategy column
        strategy = ",".join(strategy) if isinstance(strategy, list) else str(strategy)
        report, ratios = audit_tables(config, lists, pairs, dropped, scored, strategy)
        checks = verdicts(report, config)
        report = {"run": str(run_dir), "config": config.model_dump(mode="json"), "command": argv, "checks": checks, **report}
        folder = layout.AUDIT.path(run_dir)
        summary = {c["check"]: {"verdict": c["verdict"], "value": c["value"], "rule": c["rule"]} for c in checks}
        manifest.set_stage(
            "audit",
            {
                "config": config.model_dump(mode="json"),
                "command": argv,
                "finished": True,
                "summary": summary,
                "reads": seen,
            },
        )
        with StagedWrites() as writes:  # the report's three files and the manifest's record land together, or none
            writes.write_json(layout.AUDIT_JSON.path(run_dir), report)
            writes.write_bytes(layout.AUDIT_MD.path(run_dir), audit_markdown(report).encode("utf-8"))
            writes.write_bytes(layout.AUDIT_PNG.path(run_dir), figure_png(audit_plot(report, ratios)))
            writes.write_json(run_dir / MANIFEST, manifest_record(manifest))
    return AuditReport(folder, report, checks, list(config.fail_on))


def card_lines(entry: AuditRecord) -> list[str]:
    """The audit's verdicts as markdown lines for the dataset card (stages/push.py), from the manifest's entry."""
    summary = entry.summary
    if not summary:
        return []
    lines = ["", "Data audit (`neat-data audit`):", "", "| check | verdict | value | rule |", "|---|---|---|---|"]
    for check in [c for c in AUDIT_CHECKS if c in summary]:  # the manifest's JSON keeps keys sorted: the checks' own order
        item = summary[check]
        value = item.get("value")
        lines.append(f"| {check} | {item.get('verdict')} | {'–' if value is None else format(value, '.3f')} | {item.get('rule')} |")
    return lines


def audit_result(config: DataAuditConfig, argv: list[str] | None) -> StageResult:
    """The audit as a round's stage: its report's lines, and its gate — a FAIL of a check in `fail_on` stops the round
    before its exports and training (exit 5)."""
    report = run_data_audit(config, argv=argv)
    report.raise_for_failures("recipe audit.fail_on: the round stops before its exports and training")
    return StageResult(report.lines(), read_manifest(Path(config.run)).record("audit", AuditRecord))


AUDIT = Stage(
    "audit",
    DataAuditConfig,
    audit_result,
    reads=lambda c: [layout.RANKED.path(c.run), layout.SCORED.path(c.run)],
    writes=lambda c: [layout.AUDIT.path(c.run)],
    record=AuditRecord,
    recipe_section="audit",
    manifest_entries=lambda c: ["audit"],
    section_may_change=True,
)
