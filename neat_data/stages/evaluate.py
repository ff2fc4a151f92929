"""Evaluate stage: the paper's protocol in small, on held-out prompts with the neutral prompt only, plus safety suites.

In:  a policy, held-out prompts, the run's scorer; optionally evaluation suites (`prompts/eval/*.yaml`), the base
     model's evaluation folder and a set of held-out preferred responses.
Out: `<eval>/generations/`, `<eval>/scored/` (ordinary run-folder tables), per harmful suite `<eval>/suites/<name>/`
     (its prompts.jsonl + generations/, a run folder of its own), per suite `<eval>/suites/<name>/metrics.parquet`
     (one row per response with its metric values) and `<eval>/metrics.json`:
     - reward: mean score of the policy's responses with a 95% bootstrap confidence interval (the run's own
       scorer — the reward the policy was trained toward, so not evidence of safety on its own);
     - win_rate_vs_base: share of held-out prompts where the policy's response scores above the base
       model's (ties count one half), when a base evaluation is given;
     - perplexity of the policy on the preferred responses (exp of the mean NLL per response token,
       neutral prompt through the policy's chat template), when they are given;
     - suites: per suite and metric (refusal, P(offensive), VADER tone, length, cut at max tokens — refusal wording,
       offensiveness and tone, *not helpfulness*; `neat_data.safety.metrics`) the mean over prompts with its 95%
       bootstrap interval and, given the base model's eval folder, the paired interval of (policy − base).
     With `samples` = k every prompt gets k neutral responses; a prompt's samples are averaged before any interval
     (the bootstrap resamples prompts, not samples).
Run: `neat-data evaluate EVAL_DIR --model POLICY --heldout FILE [--samples K] [--suites harmbench,benign]
     [--suite-limit N] [--base-eval DIR] [--preferred DIR_OR_FILE]`.

Generation and scoring reuse the generate and score stages (so they resume the same way; each suite's sub-folder
resumes on its own); every engine is closed before the scorer and the perplexity model load. Suite files, their
sources and the metrics' packages are checked before anything is generated. The preferred set defaults (in
`neat-data run`) to the base model's positive-prompt responses on the held-out prompts, generated once in round 0.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.files import atomic_write_bytes, atomic_write_json
from neat_data.core.prompts_in import PromptRecord, scan_prompts
from neat_data.core.runfolder import RunLock, atomic_write_table, read_parquet
from neat_data.core.stage import Stage, StageResult
from neat_data.engines.base import Backend
from neat_data.lm.perplexity import perplexity
from neat_data.safety.metrics import check_metric_dependencies
from neat_data.safety.stats import bootstrap_mean as prompt_bootstrap
from neat_data.safety.stats import per_prompt_means
from neat_data.safety.suites import HELDOUT, Suite, load_suites, suite_prompts
from neat_data.safety.summary import measure, measured_table, summarise
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.stages.score import ScoreConfig, run_score


class EvaluateConfig(BaseModel):
    """Generation (k neutral responses; `generate.num_pos` > 0 also samples the preferred set), scoring, suites, metrics."""

    model_config = ConfigDict(extra="forbid")

    generate: GenerateConfig = Field(
        description="Held-out generation: prompts, policy, sampling, backend; out = the eval folder. num_neutral is set from `samples`."
    )
    score: ScoreConfig = Field(description="The run's scorer; run = the eval folder.")
    samples: int = Field(
        1, ge=1, le=256, description="Responses per prompt (k) with the neutral prompt, for the held-out prompts and every suite."
    )
    suites: list[str] = Field(default_factory=list, description="Evaluation suites: bundled names (prompts/eval/*.yaml) or YAML paths.")
    suite_limit: int | None = Field(
        None, ge=1, description="At most N prompts per suite (a seeded subset; a suite's own limit still applies)."
    )
    base_eval: Path | None = Field(
        None, description="The base model's eval folder: win rate against its responses, paired suite intervals."
    )
    preferred: Path | None = Field(
        None,
        description="Preferred responses for perplexity: an eval/run folder (its positive-prompt rows) or a Parquet/JSONL with prompt + response.",
    )
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples for every confidence interval.")
    max_length: int = Field(2048, ge=8, description="Longest sequence in the perplexity pass.")
    device: str = Field("auto", description="auto | cpu | cuda: perplexity pass.")

    @model_validator(mode="after")
    def _samples_are_the_neutral_responses(self) -> EvaluateConfig:
        if self.generate.num_neutral not in (0, self.samples):
            raise ValueError(f"generate.num_neutral ({self.generate.num_neutral}) differs from samples ({self.samples}): set samples only")
        self.generate = self.generate.model_copy(update={"num_neutral": self.samples})
        return self


def neutral_scores(eval_dir: Path, samples: int | None = None) -> dict[str, float]:
    """prompt_id → mean score of its unsteered responses (ok rows; the first `samples` when given)."""
    columns = ["prompt_id", "steering", "sample_index", "score", "score_status"]
    rows = pq.read_table(layout.SCORED.path(eval_dir), columns=columns).to_pylist()
    kept = [r for r in rows if r["steering"] == "none" and r["score_status"] == "ok" and (samples is None or r["sample_index"] < samples)]
    return per_prompt_means([r["prompt_id"] for r in kept], [r["score"] for r in kept])


def win_rate(policy: dict[str, float], base: dict[str, float]) -> tuple[float, int]:
    shared = sorted(set(policy) & set(base))
    if not shared:
        return math.nan, 0
    wins = sum(1.0 if policy[p] > base[p] else 0.5 if policy[p] == base[p] else 0.0 for p in shared)
    return wins / len(shared), len(shared)


def load_preferred(source: Path) -> list[dict[str, Any]]:
    """Rows {prompt, responses: [text], scores: [0], finish_reason: [reason]} for the perplexity pass (rendered like
    the trainer's candidates: the end-of-turn token only after a finished response)."""
    if source.is_dir():
        table = layout.SCORED if layout.SCORED.path(source).is_dir() else layout.GENERATIONS
        if not table.path(source).is_dir():
            raise NeatError("no generations/ or scored/ to take preferred responses from", file=source)
        rows = [
            r
            for r in table.rows(source).read(["prompt", "response", "steering", "status", "sample_index", "finish_reason"]).to_pylist()
            if r["steering"] == "pos" and r["status"] == "ok" and r["sample_index"] == 0
        ]
        triples = [(r["prompt"], r["response"], r["finish_reason"]) for r in rows]
    elif source.suffix == ".parquet":
        table = read_parquet(source)
        if "prompt" not in table.column_names or "response" not in table.column_names:
            raise NeatError("needs 'prompt' (messages) and 'response'", file=source, field="response")
        reasons = table.column("finish_reason").to_pylist() if "finish_reason" in table.column_names else [None] * table.num_rows
        triples = list(zip(table.column("prompt").to_pylist(), table.column("response").to_pylist(), reasons))
    else:
        triples = []
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise NeatError(f"invalid JSON ({error.msg})", file=source, row=number) from None
                if not isinstance(row, dict) or "prompt" not in row or "response" not in row:
                    raise NeatError("needs 'prompt' (messages) and 'response'", file=source, row=number, field="response")
                triples.append((row["prompt"], row["response"], row.get("finish_reason")))
    return [
        {"prompt": prompt, "prompt_id": str(i), "responses": [response], "scores": [0.0], "finish_reason": [reason]}
        for i, (prompt, response, reason) in enumerate(triples)
        if response
    ]


def suite_folder(eval_dir: Path, suite: Suite) -> Path:
    return layout.EVAL_SUITES.path(eval_dir) / suite.name


def suite_rows(eval_dir: Path, suite: Suite, prompt_ids: set[str] | None = None, samples: int | None = None) -> list[dict[str, Any]] | None:
    """The unsteered generation rows of a suite in an eval folder (None when it was never generated there)."""
    folder = eval_dir if suite.source == HELDOUT else suite_folder(eval_dir, suite)
    if not layout.GENERATIONS.path(folder).is_dir():
        return None
    table = layout.GENERATIONS.rows(folder).read()  # the last row of each key; a torn shard is a NeatError
    columns = ["prompt_id", "steering", "sample_index", "response", "finish_reason", "status"]
    return [
        r
        for r in table.select(columns).to_pylist()
        if r["steering"] == "none"
        and (prompt_ids is None or r["prompt_id"] in prompt_ids)
        and (samples is None or r["sample_index"] < samples)
    ]


def generate_suite(
    config: EvaluateConfig, suite: Suite, records: list[PromptRecord], *, argv: list[str] | None, progress: bool, backend: Any = None
) -> None:
    """k neutral responses per suite prompt into the suite's own run folder (it resumes like any generate)."""
    folder = suite_folder(Path(config.generate.out), suite)
    prompts_path = layout.EVAL_PROMPTS.path(folder)
    text = "".join(json.dumps({"prompt_id": r.prompt_id, "messages": r.messages}, ensure_ascii=False) + "\n" for r in records).encode(
        "utf-8"
    )
    if not prompts_path.is_file() or prompts_path.read_bytes() != text:
        atomic_write_bytes(prompts_path, text)
    run_generate(
        config.generate.model_copy(
            update={
                "prompts": str(prompts_path),
                "prompt_column": None,
                "limit": None,
                "out": folder,
                "num_pos": 0,
                "num_neg": 0,
                "num_neutral": config.samples,
            }
        ),
        backend=backend,
        progress=progress,
        argv=argv,
    )


def evaluate_suite(config: EvaluateConfig, suite: Suite, prompt_ids: set[str] | None) -> dict[str, Any]:
    """Measure one suite's responses (→ metrics.parquet) and summarise them, paired with the base model's when given."""
    eval_dir = Path(config.generate.out)
    rows = suite_rows(eval_dir, suite, prompt_ids, config.samples) or []
    measured = measure(rows, suite.metrics)
    atomic_write_table(suite_folder(eval_dir, suite) / "metrics.parquet", measured_table(measured, suite.metrics))
    base_rows = suite_rows(config.base_eval, suite, {r["prompt_id"] for r in rows}) if config.base_eval is not None else None
    base = measure(base_rows, suite.metrics) if base_rows is not None else None
    summary = summarise(measured, suite.metrics, base=base, resamples=config.bootstrap, seed=config.generate.sampling.seed)
    return {
        "kind": suite.kind,
        "source": suite.source,
        "samples": config.samples,
        "error_rows": sum(r["status"] != "ok" for r in rows),
        **({"base_eval": str(config.base_eval), "base_found": base is not None} if config.base_eval is not None else {}),
        **summary,
    }


class SharedBackend(Backend):
    """One engine for the held-out prompts and every suite of an evaluation, started on first use (a finished
    evaluation that is run again starts none) and closed by the caller: a vLLM engine start costs minutes on a GPU."""

    def __init__(self, config: GenerateConfig, progress: bool):
        self.config, self.progress = config, progress
        self.name: str = config.backend
        self.model: str = config.model
        self.inner: Any = None

    def generate(self, requests: Any, sampling: Any) -> Any:
        if self.inner is None:
            from neat_data.stages.generate.stage import start_backend

            self.inner = start_backend(self.config, Path(self.config.out), None, self.progress)
            self.stats = self.inner.stats
        return self.inner.generate(requests, sampling)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """What `neat-data run` prints for an evaluation: the held-out reward, win rate and perplexity, then each suite's
    refusal rate with its paired difference against the base model."""
    low, high = metrics["reward_ci95"]
    extra = "".join(
        f" {label} {metrics[key]:.2f}"
        for key, label in (("win_rate_vs_base", "win-vs-base"), ("perplexity", "perplexity"))
        if metrics.get(key) is not None
    )
    lines = [f"eval: {metrics['prompts']} held-out prompts, reward {metrics['reward_mean']:+.4f} [{low:+.4f}, {high:+.4f}]{extra}"]
    for suite, entry in (metrics.get("suites") or {}).items():
        refusal = (entry.get("metrics") or {}).get("refusal")
        if refusal and refusal.get("mean") is not None:
            low, high = refusal["ci95"]
            vs = refusal.get("vs_base") or {}
            paired = f", vs base {vs['mean']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}]" if vs.get("mean") is not None else ""
            lines.append(f"      {suite}: refusal {refusal['mean']:.3f} [{low:.3f}, {high:.3f}] over {refusal['prompts']} prompts{paired}")
    return lines


def run_evaluate(config: EvaluateConfig, *, argv: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    started = time.time()
    eval_dir = Path(config.generate.out)
    if Path(config.score.run) != eval_dir:
        raise NeatError("score.run must be the eval folder (generate.out)", field="score.run")
    # Every suite problem (file, metric, source, missing package) stops here, before anything is written.
    suites = load_suites(config.suites)
    check_metric_dependencies(sorted({m for suite in suites for m in suite.metrics}))
    suite_records = {s.name: suite_prompts(s, limit=config.suite_limit) for s in suites if s.source != HELDOUT}
    if config.generate.local_model():
        from neat_data.core.models import resolve_model as check_model

        check_model(config.generate.model)  # the shared engine starts lazily: check its model first, as generate would
    generate = config.generate
    # the held-out prompts too (generate checks them again, under the lock this takes: the lock makes the folder)
    scan_prompts(
        generate.prompts, prompt_column=generate.prompt_column, limit=generate.limit, allow_system=generate.system_combine != "refuse"
    )
    with RunLock(eval_dir, covers_nested=True):  # one evaluate per folder, for its whole run (generate, score, metrics)
        return _evaluate(config, eval_dir, suites, suite_records, started, argv=argv, progress=progress)


def _evaluate(
    config: EvaluateConfig,
    eval_dir: Path,
    suites: list[Suite],
    suite_records: dict[str, list[PromptRecord]],
    started: float,
    *,
    argv: list[str] | None,
    progress: bool,
) -> dict[str, Any]:
    from neat_data.core.models import resolve_model
    from neat_data.engines import BACKENDS

    # batch backends keep files per run folder (each suite is one): they are not shared
    shared = None if BACKENDS[config.generate.backend].batch else SharedBackend(config.generate, progress)
    try:
        run_generate(config.generate, backend=shared, progress=progress, argv=argv)
        for suite in suites:
            if suite.source != HELDOUT:
                generate_suite(config, suite, suite_records[suite.name], argv=argv, progress=progress, backend=shared)
    finally:
        if shared is not None:
            shared.close()  # the engine goes before the scorer and the perplexity model load
    run_score(config.score, progress=progress, argv=argv)
    scores = neutral_scores(eval_dir, config.samples)
    # the mapping (ordered by prompt id), as every other interval: the same numbers whatever the order of the rows
    reward = prompt_bootstrap(scores, config.bootstrap, config.generate.sampling.seed)
    mean, low, high = reward.mean, reward.low, reward.high
    metrics: dict[str, Any] = {
        "model": config.generate.model,
        "prompts": len(scores),
        "samples": config.samples,
        "reward_mean": mean,
        "reward_ci95": [low, high],
        "scorer": config.score.scorer,
        "scorer_model": config.score.model,
    }
    if config.base_eval is not None:
        metrics["win_rate_vs_base"], metrics["win_rate_prompts"] = win_rate(scores, neutral_scores(config.base_eval))
    if suites:
        metrics["suites"] = {
            s.name: evaluate_suite(config, s, {r.prompt_id for r in suite_records[s.name]} if s.name in suite_records else None)
            for s in suites
        }
    if config.preferred is not None:
        preferred = load_preferred(config.preferred)
        metrics["perplexity"], metrics["perplexity_tokens"] = perplexity(
            resolve_model(config.generate.model), preferred, max_length=config.max_length, device=config.device
        )
    metrics["seconds"] = round(time.time() - started, 2)
    atomic_write_json(layout.EVAL_METRICS.path(eval_dir), {**metrics, "config": config.model_dump(mode="json"), "command": argv})
    return metrics


EVALUATE = Stage(
    "evaluate",
    EvaluateConfig,
    lambda config, argv: StageResult(summary_lines(run_evaluate(config, argv=argv))),
    reads=lambda c: [Path(c.generate.model), *([Path(c.base_eval)] if c.base_eval else [])],
    writes=lambda c: [Path(c.generate.out)],
    record=None,
    recipe_section="evaluate",
)
