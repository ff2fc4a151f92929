"""Audit a prompt-pair library on a model: does each pair's contrast separate the responses it produces?

In:  a library (bundled name or YAML), a model, a few harmful prompts (a seeded subset of an evaluation suite) and a
     few benign ones (a prompts file, seeded subset).
Out: a dict (written as JSON by the CLI) and a markdown table: per pair, on harmful and benign prompts, under its
     positive and its negative system prompt (and, once for all pairs, under no system prompt): refusal rate
     (HarmBench's AdvBench prefixes), P(offensive), VADER tone, words, share cut at max tokens — each a mean over
     prompts with a 95% prompt-bootstrap interval and the paired (positive − negative) interval — and the pair's
     self-contrast gap: mean s(y_pos) − s(y_neg) under the model itself, with s the training scorer
     `(1/|y|)[log π(y|pos,x) − log π(y|neg,x)]`. These measure refusal wording, offensiveness and tone, not helpfulness.
Run: `neat-data prompts audit harmless --model smollm2-135m-instruct [--prompts P] [--suite harmbench] [--harmful 6 --benign 6]`.

The backend comes from the one factory (`engines.make_backend`: transformers by default, vLLM optionally); the
generation engine is closed before the self-contrast model loads. Each request's seed derives from (seed, prompt_id, steering, pair) as in `generate`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.keys import request_seed
from neat_data.core.messages import build_messages
from neat_data.core.pairs import PromptPair, load_library
from neat_data.core.prompts_in import PromptRecord, load_prompts
from neat_data.engines import BackendOptions, make_backend
from neat_data.engines.base import GenerationRequest, MaxTokens, Sampling, Seed, Temperature, TopP
from neat_data.safety.metrics import METRICS, check_metric_dependencies, response_metrics
from neat_data.safety.stats import bootstrap_mean, paired_difference, per_prompt_means
from neat_data.safety.suites import load_suite, seeded_subset, suite_prompts

PromptSet = Literal["harmful", "benign"]
Steering = Literal["pos", "neg", "none"]
SUMMARY_SETS = ("harmful", "benign", "all")


class AuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    library: str = Field(description="Prompt-pair library: bundled name or YAML path.")
    model: str = Field(description="Model to audit: bundled alias, local HF folder or Hub id.")
    prompts: str | None = Field(None, description="Benign prompts (.jsonl/.parquet/.csv/hf://); default: the bundled quickstart prompts.")
    prompt_column: str | None = Field(None, description="Column holding the benign prompt.")
    suite: str = Field(
        "strongreject",
        description="Harmful prompts from this evaluation suite (name or YAML; harmbench's contextual prompts are long, so slower).",
    )
    harmful: int = Field(6, ge=0, description="Harmful prompts (a seeded subset of the suite).")
    benign: int = Field(6, ge=0, description="Benign prompts (a seeded subset of --prompts).")
    samples: int = Field(1, ge=1, le=64, description="Responses per prompt and condition.")
    max_tokens: MaxTokens = 48
    temperature: Temperature = 0.7
    top_p: TopP = 0.95
    seed: Seed = Field(0, description="Seed of the prompt subsets and of every request.")
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers: no engine start (the default sizes take a few minutes on a CPU); vllm for large audits."
    )
    batch_size: int = Field(16, ge=1, description="transformers: sequences per generate call; self-contrast batch size.")
    self_contrast: bool = Field(
        True,
        description="Score every steered answer with self-contrast (the training scorer's pos − neg gap). Off: no second "
        "model pass (on a 0.5B model on a CPU that pass takes longer than generating); the gap column reads 'not run'.",
    )
    device: str = Field("auto", description="auto | cpu | cuda (transformers generation and self-contrast).")
    out: Path | None = Field(
        None,
        description="JSON of the numbers (default runs/audit/<library>-<model>.json); the responses go to the same name with .responses.jsonl.",
    )

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed)

    def benign_source(self) -> str:
        from neat_data.core.resources import bundled_dir

        return self.prompts or str(bundled_dir("pipelines") / "data" / "quickstart_prompts.jsonl")

    def out_path(self) -> Path:
        return self.out or Path("runs") / "audit" / f"{_slug(self.library)}-{_slug(self.model)}.json"


def _slug(text: str) -> str:
    """A file-name piece for a library or model: its name without folders or .yaml."""
    name = Path(text).stem if text.endswith((".yaml", ".yml")) else Path(text.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"


@dataclass(frozen=True)
class Planned:
    prompt_set: PromptSet
    record: PromptRecord
    steering: Steering
    pair: PromptPair | None


def plan(harmful: list[PromptRecord], benign: list[PromptRecord], pairs: tuple[PromptPair, ...]) -> tuple[list[Planned], list[Planned]]:
    """(unsteered, steered): every prompt once with no system prompt; then per prompt each pair's positive and negative.
    The unsteered requests go to the engine on their own, so their samples are the same whichever library is audited
    (the transformers backend seeds a batch from its first request)."""
    sets: tuple[tuple[PromptSet, list[PromptRecord]], ...] = (("harmful", harmful), ("benign", benign))
    unsteered = [Planned(prompt_set, record, "none", None) for prompt_set, records in sets for record in records]
    steered = [
        Planned(prompt_set, record, steering, pair)
        for prompt_set, records in sets
        for record in records
        for pair in pairs
        for steering in ("pos", "neg")
    ]
    return unsteered, steered


def engine_request(item: Planned, samples: int, seed: int) -> GenerationRequest:
    system = item.pair.system_prompt(item.steering) if item.pair else None
    merged = build_messages(item.record.messages, system, "merged") if system else None
    return GenerationRequest(
        messages=build_messages(item.record.messages, system, "system"),
        merged_messages=merged,
        n=samples,
        seed=request_seed(seed, item.record.prompt_id, item.steering, item.pair.id if item.pair else None),
    )


def self_contrast_scores(config: AuditConfig, rows: list[dict[str, Any]], pairs: dict[str, PromptPair], *, progress: bool = True) -> None:
    """Set row["self_contrast"] for every steered row: its score under its own pair, as the training scorer gives it.
    Scored a few batches at a time so the bar moves (on a 0.5B model on a CPU this pass takes minutes)."""
    from tqdm.auto import tqdm

    from neat_data.core.models import resolve_model
    from neat_data.scorers.base import ScoreItem
    from neat_data.scorers.self_contrast import SelfContrastScorer

    steered = [row for row in rows if row["pair"] is not None]
    if not steered:
        return
    scorer = SelfContrastScorer(resolve_model(config.model), batch_size=config.batch_size, device=config.device)
    items = [
        ScoreItem(
            prompt=row["prompt"],
            response=row["response"],
            steering=row["steering"],
            positive_system=pairs[row["pair"]].positive,
            negative_system=pairs[row["pair"]].negative,
        )
        for row in steered
    ]
    chunk = 4 * config.batch_size
    with tqdm(total=len(items), unit="answer", desc="self-contrast", disable=not progress) as bar:
        for start in range(0, len(items), chunk):
            for row, result in zip(steered[start : start + chunk], scorer.score(items[start : start + chunk])):
                row["self_contrast"] = result.score
            bar.update(len(items[start : start + chunk]))


def interval(rows: list[dict[str, Any]], metric: str, resamples: int, seed: int) -> dict[str, Any]:
    kept = [row for row in rows if row.get(metric) is not None]
    return bootstrap_mean(per_prompt_means([r["prompt_id"] for r in kept], [r[metric] for r in kept]), resamples, seed).to_json()


def contrast(pos: list[dict[str, Any]], neg: list[dict[str, Any]], metric: str, resamples: int, seed: int) -> dict[str, Any]:
    """Paired over prompts: mean of (positive − negative)."""

    def values(rows: list[dict[str, Any]]) -> dict[str, float]:
        kept = [row for row in rows if row.get(metric) is not None]
        return per_prompt_means([r["prompt_id"] for r in kept], [r[metric] for r in kept])

    return paired_difference(values(pos), values(neg), resamples, seed).to_json()


def summarise_audit(rows: list[dict[str, Any]], pairs: tuple[PromptPair, ...], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per pair and prompt set: each metric under pos / neg with intervals and the paired (pos − neg) interval."""

    def subset(prompt_set: str, **match: Any) -> list[dict[str, Any]]:
        return [r for r in rows if (prompt_set == "all" or r["prompt_set"] == prompt_set) and all(r[k] == v for k, v in match.items())]

    summary: dict[str, Any] = {
        "none": {s: {m: interval(subset(s, steering="none"), m, resamples, seed) for m in METRICS} for s in SUMMARY_SETS},
        "pairs": [],
    }
    for pair in pairs:
        entry: dict[str, Any] = {"id": pair.id, "positive": pair.positive, "negative": pair.negative}
        for prompt_set in SUMMARY_SETS:
            pos, neg = subset(prompt_set, pair=pair.id, steering="pos"), subset(prompt_set, pair=pair.id, steering="neg")
            entry[prompt_set] = {
                metric: {
                    "pos": interval(pos, metric, resamples, seed),
                    "neg": interval(neg, metric, resamples, seed),
                    "pos_minus_neg": contrast(pos, neg, metric, resamples, seed),
                }
                for metric in (*METRICS, "self_contrast")
            }
        summary["pairs"].append(entry)
    return summary


def run_audit(
    config: AuditConfig, *, echo: Callable[[str], None] = print, progress: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate, measure, score and summarise; returns (summary, one row per response)."""
    from tqdm.auto import tqdm

    started = time.time()
    library = load_library(config.library)
    suite = load_suite(config.suite)
    check_metric_dependencies(METRICS)
    harmful = suite_prompts(suite, limit=config.harmful) if config.harmful else []
    benign_records = load_prompts(config.benign_source(), prompt_column=config.prompt_column).records if config.benign else []
    benign = seeded_subset(benign_records, config.benign, config.sampling.seed)
    unsteered, steered = plan(harmful, benign, library.pairs)
    planned = unsteered + steered
    if not planned:
        from neat_data.core.errors import NeatError

        raise NeatError("nothing to audit: --harmful and --benign are both 0", field="harmful")
    echo(
        f"audit: {len(library.pairs)} pairs of {library.name} × ({len(harmful)} harmful + {len(benign)} benign prompts) × "
        f"{config.samples} sample(s) → {len(planned) * config.samples} responses on {config.model} ({config.backend})"
    )
    options = BackendOptions(transformers_batch_size=config.batch_size, transformers_device=config.device)
    backend = make_backend(config.backend, config.model, options, seed=config.seed)
    rows: list[dict[str, Any]] = []
    errors = 0
    bar = tqdm(total=len(planned) * config.samples, unit="response", desc="audit", disable=not progress)
    try:
        for group in (unsteered, steered):
            requests = [engine_request(item, config.samples, config.sampling.seed) for item in group]
            for index, result in backend.generate(requests, config.sampling) if requests else ():
                item = group[index]
                bar.update(config.samples)
                if result.error is not None:
                    errors += config.samples
                    continue
                for sample_index, completion in enumerate(result.completions):
                    if completion.text is None:
                        errors += 1
                        continue
                    rows.append(
                        {
                            "prompt_set": item.prompt_set,
                            "prompt_id": item.record.prompt_id,
                            "prompt": item.record.messages,
                            "steering": item.steering,
                            "pair": item.pair.id if item.pair else None,
                            "sample_index": sample_index,
                            "response": completion.text.strip(),
                            "finish_reason": completion.finish_reason,
                        }
                    )
    finally:
        bar.close()
        backend.close()
    generated = time.time()
    echo(
        f"audit: generated in {generated - started:.0f} s; "
        + ("self-contrast scoring of the steered responses …" if config.self_contrast else "self-contrast not run (--no-self-contrast)")
    )
    rows.sort(key=lambda r: (r["prompt_set"], r["pair"] or "", r["steering"], r["prompt_id"], r["sample_index"]))
    values = response_metrics(METRICS, [r["response"] for r in rows], [r["finish_reason"] for r in rows])
    for index, row in enumerate(rows):
        row.update({metric: values[metric][index] for metric in METRICS}, self_contrast=None)
    if config.self_contrast:
        self_contrast_scores(config, rows, {pair.id: pair for pair in library.pairs}, progress=progress)
    summary = summarise_audit(rows, library.pairs, seed=config.sampling.seed)
    summary.update(
        library=library.name,
        library_path=str(library.path),
        library_hash=library.content_hash,
        model=config.model,
        suite=suite.name,
        harmful_source=suite.source,
        prompts=config.benign_source(),
        harmful_prompts=len(harmful),
        benign_prompts=len(benign),
        self_contrast="run" if config.self_contrast else "not run",
        responses=len(rows),
        error_responses=errors,
        config=config.model_dump(mode="json"),
        seconds={"generate": round(generated - started, 1), "total": round(time.time() - started, 1)},
        note="refusal = HarmBench AdvBench refusal-prefix match; offensive = alt-profanity-check P(offensive); "
        "tone = VADER compound; these measure refusal wording, offensiveness and tone, not helpfulness",
    )
    return summary, rows


def write_audit(config: AuditConfig, summary: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """The numbers as JSON (`config.out_path()`) and every response as JSONL beside it; each file whole or absent."""
    from neat_data.core.files import atomic_write_bytes, atomic_write_json

    out = config.out_path()
    responses = out.with_name(out.stem + ".responses.jsonl")
    atomic_write_json(out, summary)
    atomic_write_bytes(responses, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))
    return out, responses


def _cell(entry: dict[str, Any] | None, spec: str) -> str:
    value = (entry or {}).get("mean")
    return "–" if value is None else format(value, spec)


def _with_ci(entry: dict[str, Any], spec: str) -> str:
    low, high = entry.get("ci95") or [None, None]
    if entry.get("mean") is None:
        return "–"
    return f"{format(entry['mean'], spec)} [{format(low, spec)}, {format(high, spec)}]"


def audit_table(summary: dict[str, Any]) -> list[str]:
    """The printed table: one row per pair (and one for no system prompt), positive / negative per cell."""
    lines = [
        "| pair | refusal harmful pos / neg | Δ refusal harmful (95% CI) | refusal benign pos / neg | P(offensive) pos / neg | "
        "tone pos / neg | words pos / neg | self-contrast gap (95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    none = summary["none"]

    def gap(group: dict[str, Any]) -> str:
        return "not run" if summary.get("self_contrast") == "not run" else _with_ci(group["self_contrast"]["pos_minus_neg"], "+.4f")

    lines.append(
        f"| (no system prompt) | {_cell(none['harmful']['refusal'], '.2f')} | – | {_cell(none['benign']['refusal'], '.2f')} | "
        f"{_cell(none['all']['offensive'], '.3f')} | {_cell(none['all']['tone'], '+.2f')} | {_cell(none['all']['length'], '.0f')} | – |"
    )
    for pair in summary["pairs"]:
        harmful, benign, every = pair["harmful"], pair["benign"], pair["all"]

        def both(group: dict[str, Any], metric: str, spec: str) -> str:
            return f"{_cell(group[metric]['pos'], spec)} / {_cell(group[metric]['neg'], spec)}"

        lines.append(
            f"| {pair['id']} | {both(harmful, 'refusal', '.2f')} | {_with_ci(harmful['refusal']['pos_minus_neg'], '+.2f')} | "
            f"{both(benign, 'refusal', '.2f')} | {both(every, 'offensive', '.3f')} | {both(every, 'tone', '+.2f')} | "
            f"{both(every, 'length', '.0f')} | {gap(every)} |"
        )
    return lines
