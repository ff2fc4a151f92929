"""The generate stage's config and its pure part: prompts × pairs → planned requests (seeds, content keys) → engine
requests; one engine result → rows. No I/O, no engine: every function here is a function of its arguments.

In:  PromptRecords (neutral conversations, maybe with their own system message), pair libraries, the stage config.
Out: `PlannedRequest`s (one per prompt × steering, with the content keys of its samples), `GenerationRequest`s for the
     backend, the rows of `neat_data.core.schemas.GENERATIONS` for one result (one row per sample, ok or error, never
     dropped), and the stage's summary (counts, requests by reason, tokens and cost).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from neat_data.core import layout
from neat_data.core.errors import EXIT_NOTHING_OK, EXIT_PENDING, NeatError, redact_secrets
from neat_data.core.keys import content_key, dataset_key, request_seed, text_hash
from neat_data.core.manifest import GenerateRecord, read_manifest
from neat_data.core.messages import SystemCombine, build_messages, error_columns, parse_reply
from neat_data.core.pairs import PairLibrary, PromptPair, choose_pair
from neat_data.core.prompts_in import PkuRank, PreferenceLayout, PromptRecord, ResponseReading, ResponsesMode
from neat_data.core.stage import StageResult
from neat_data.engines import BACKENDS, BackendName, BackendOptions
from neat_data.engines.base import GenerationRequest, RequestResult, Sampling
from neat_data.engines.costs import BudgetOptions, PriceOptions, cost_line

# Fields that define what a run folder contains: a re-run with other values would mix incompatible rows.
IDENTITY_FIELDS = ("model", "pairs", "sampling", "round", "system_mode", "system_combine", "responses", "pku_rank")
# Which existing rows `--redo` generates again (with this invocation's sampling; every other row is left as it is).
RedoClass = Literal["truncated", "error", "refused", "steering=pos", "steering=neg", "steering=none"]


class GenerateConfig(BackendOptions, PriceOptions, BudgetOptions):
    """Everything the generate stage needs; saved (resolved) in the run's manifest. Holds no secret.

    The backends' own options (vLLM, OpenAI-compatible, transformers, Ray) are inherited from
    `neat_data.engines.BackendOptions`: each is defined once, beside its backend."""

    model_config = ConfigDict(extra="forbid")

    prompts: str = Field(
        description="Prompts: .jsonl/.parquet/.csv, hf://<dataset>[:<config>][@<split>] or a bundled harmful set "
        "(data://harmbench[@test|@val|@test-standard], data://strongreject[@small])."
    )
    prompt_column: str | None = Field(None, description="Column holding the prompt (default: messages, prompt or chosen).")
    limit: int | None = Field(None, ge=1, description="Use only the first N unique prompts.")
    responses: ResponsesMode = Field(
        "drop",
        description="keep: the prompts file is preference data (see --layout) and each of its responses becomes a row of "
        "steering 'dataset' beside the generated ones, with its label, rank, score and safety flag (no engine call); "
        "drop: read the prompts only.",
    )
    derived_from: str | None = Field(
        None,
        description="With --responses keep, the dataset the prompts file was drawn from, named as its source in the "
        "manifest, card and croissant.json (a recipe's round file: the recipe's prompts.source); default: the file itself.",
    )
    layout: PreferenceLayout = Field(
        "auto",
        description="With --responses keep, the file's layout: hh (chosen/rejected transcripts), trl (prompt/chosen/"
        "rejected, or chosen/rejected message lists), ultrafeedback (+ score_chosen/score_rejected), pku "
        "(response_0/response_1), ranked (responses + scores or ranks); auto: from the columns.",
    )
    pku_rank: PkuRank = Field(
        "safer", description="With --layout pku, which answer is the dataset's preferred one: safer_response_id or better_response_id."
    )
    pairs: list[str] = Field(
        default_factory=lambda: ["harmless"],
        min_length=1,
        description="Prompt-pair libraries, comma-separated (bundled names or YAML paths).",
    )
    model: str = Field(description="Bundled alias (smollm2-135m-instruct), local HF folder or Hub id; for openai the served name.")
    backend: BackendName = Field(
        "vllm",
        description="vllm: one engine in this process; openai: any compatible server; transformers: "
        "model.generate, no engine start (small jobs); ray: vLLM engines in Ray Data actors; "
        "openai-batch: the OpenAI Batch API (half price; re-runs attach); vllm-batch: the same "
        "batch files through vLLM's run_batch (docs/BATCH.md).",
    )
    out: Path = Field(description="Run folder.")
    round: int = Field(1, ge=0, description="Round recorded in every row (online NEAT rounds; 0 = the base model's evaluation).")
    num_pos: int = Field(2, ge=0, le=256, description="Responses per prompt under the positive system prompt.")
    num_neg: int = Field(
        2, ge=0, le=256, description="Responses per prompt under the negative system prompt (0: the positive-only baseline)."
    )
    num_neutral: int = Field(0, ge=0, le=256, description="Responses per prompt with no system prompt.")
    sampling: Sampling = Field(default_factory=Sampling)
    system_mode: Literal["auto", "system", "merged"] = Field(
        "auto", description="auto: system role unless the chat template/server rejects it, then merged into the first user turn."
    )
    system_combine: SystemCombine = Field(
        "prepend",
        description="A prompt with its own system message (a persona): prepend the steering text to it (blank line between), "
        "append it, or refuse such prompts.",
    )
    flush_every: int = Field(256, ge=1, description="Write a shard every N rows.")
    redo: list[RedoClass] = Field(
        default_factory=list,
        description="Generate these existing rows again with this command's sampling (e.g. a larger --max-tokens), keeping "
        "every other row: truncated (cut at max_tokens), error, refused (AdvBench refusal prefix), steering=pos|neg|none.",
    )

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if self.num_pos + self.num_neg + self.num_neutral == 0 and self.responses != "keep":
            raise ValueError("num_pos + num_neg + num_neutral must be at least 1 (or --responses keep)")
        if self.responses == "keep" and self.prompt_column is not None:
            raise ValueError("--prompt-column reads prompts only; with --responses keep the layout names the columns (--layout)")
        if self.responses != "keep" and (self.layout != "auto" or self.pku_rank != "safer"):
            raise ValueError("--layout and --pku-rank read the file's responses: add --responses keep")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url")
        if (self.price_in is None) != (self.price_out is None):
            raise ValueError("give both --price-in and --price-out (per 1M prompt and completion tokens), or neither")
        if self.max_cost is not None and self.price_in is None:
            raise ValueError("--max-cost needs --price-in and --price-out (the prices it counts with)")
        if (self.max_cost is not None or self.max_total_tokens is not None) and BACKENDS[self.backend].takes_all:
            raise ValueError(
                f"--max-cost / --max-total-tokens cannot be counted with backend '{self.backend}': {BACKENDS[self.backend].takes_all}, "
                "before any answer; see its ceiling with --dry-run and cap it with --limit"
            )
        return self

    def identity(self) -> dict[str, Any]:
        dumped = self.model_dump(mode="json")
        return {name: dumped[name] for name in IDENTITY_FIELDS}

    def response_reading(self) -> ResponseReading | None:
        """How the prompts file's own responses are read (None: prompts only)."""
        return ResponseReading(self.layout, self.pku_rank) if self.responses == "keep" else None

    def local_model(self) -> bool:
        """Whether this process (or its actors) loads the model itself: then it is checked before anything runs."""
        return not BACKENDS[self.backend].server


@dataclass(frozen=True)
class PlannedRequest:
    """One (prompt, steering) request and the content keys of its samples."""

    record: PromptRecord
    steering: str
    pair: PromptPair | None  # the pair that steers it (None when unsteered)
    system_prompt: str | None  # the steering text (None when unsteered)
    drawn: PromptPair | None  # the pair the seed draws for the prompt, recorded on every row (unsteered: what score needs)
    seed: int
    keys: tuple[str, ...]

    @property
    def own_system(self) -> bool:
        return self.record.messages[0]["role"] == "system"


def plan_requests(config: GenerateConfig, records: Iterable[PromptRecord], libraries: list[PairLibrary]) -> Iterator[PlannedRequest]:
    """Every request of `records`, in a fixed order, with its derived seed and row keys (pure; lazy)."""
    sampling = config.sampling.model_dump()
    for record in records:
        if record.repeat:  # a repeated prompt row brings dataset answers only; its prompt was planned at its first row
            continue
        pair = choose_pair(libraries, config.sampling.seed, record.prompt_id)
        for steering, count in (("pos", config.num_pos), ("neg", config.num_neg), ("none", config.num_neutral)):
            if count == 0:
                continue
            used_pair = pair if steering != "none" else None
            pair_id = used_pair.id if used_pair else None
            system_prompt = used_pair.system_prompt(steering) if used_pair else None
            system_hash = text_hash(system_prompt) if system_prompt else None
            keys = tuple(
                content_key(
                    round_index=config.round,
                    prompt_id=record.prompt_id,
                    steering=steering,
                    pair_id=pair_id,
                    system_prompt_hash=system_hash,
                    sample_index=i,
                    model=config.model,
                    sampling=sampling,
                )
                for i in range(count)
            )
            yield PlannedRequest(
                record=record,
                steering=steering,
                pair=used_pair,
                system_prompt=system_prompt,
                drawn=pair,
                seed=request_seed(config.sampling.seed, record.prompt_id, steering, pair_id),
                keys=keys,
            )


def to_engine_request(planned: PlannedRequest, config: GenerateConfig) -> GenerationRequest:
    """The messages to send: the steering text (joined with the prompt's own system text) as a system message, plus
    the same request merged into the first user turn for backends whose template or server rejects the system role."""
    prompt, steering, combine = planned.record.messages, planned.system_prompt, config.system_combine
    n, seed, request_id = len(planned.keys), planned.seed, planned.keys[0]
    if steering is None and not planned.own_system:
        return GenerationRequest(messages=build_messages(prompt, None), merged_messages=None, n=n, seed=seed, id=request_id)
    if config.system_mode == "merged":
        return GenerationRequest(
            messages=build_messages(prompt, steering, "merged", combine), merged_messages=None, n=n, seed=seed, id=request_id
        )
    return GenerationRequest(
        messages=build_messages(prompt, steering, "system", combine),
        merged_messages=build_messages(prompt, steering, "merged", combine),
        n=n,
        seed=seed,
        id=request_id,
    )


def sampling_json(config: GenerateConfig) -> str:
    """The `sampling` column of the rows a config makes."""
    return json.dumps(config.sampling.model_dump(), sort_keys=True)


def settings_hash(config: GenerateConfig, backend_name: str) -> str:
    """What made a row, as 16 hex: model, backend, the effective sampling, system mode and combine (a `--redo` pass with
    another sampling gets another hash, so a dataset made of several passes says which row came from which)."""
    settings = {
        "model": config.model,
        "backend": backend_name,
        "sampling": config.sampling.model_dump(),
        "system_mode": config.system_mode,
        "system_combine": config.system_combine,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def source_hash(config: GenerateConfig) -> str:
    """The `settings_hash` of dataset rows: the source's identity (path or hub id, and how it was read), 16 hex — no
    model or sampling, so --redo (which selects by those passes) never touches them."""
    source = {"source": config.prompts, "responses": config.responses, "pku_rank": config.pku_rank}
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def dataset_keys(config: GenerateConfig, record: PromptRecord) -> list[str]:
    return [
        dataset_key(round_index=config.round, prompt_id=record.prompt_id, label=answer.label, sample_index=index, response=answer.text)
        for index, answer in enumerate(record.responses, start=record.first_sample)
    ]


def dataset_rows(config: GenerateConfig, record: PromptRecord, wanted: set[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a prompt's dataset responses (those of `wanted` keys, or all): ordinary generations rows, status ok,
    the text as the source gave it; what a dataset does not say (finish reason, model, sampling, tokens) is null."""
    settings = source_hash(config)
    rows = []
    for index, (key, answer) in enumerate(zip(dataset_keys(config, record), record.responses), start=record.first_sample):
        if wanted is not None and key not in wanted:
            continue
        rows.append(
            {
                "key": key,
                "round": config.round,
                "prompt_id": record.prompt_id,
                "prompt": record.messages,
                "steering": "dataset",
                "system_mode": "none",
                "sample_index": index,
                "response": answer.text,
                "backend": "dataset",
                "settings_hash": settings,
                "status": "ok",
                "source_label": answer.label,
                "source_rank": answer.rank,
                "source_score": answer.score,
                "source_safe": answer.safe,
            }
        )
    return rows


def result_rows(
    config: GenerateConfig, planned: PlannedRequest, result: RequestResult, backend_name: str, wanted: set[str]
) -> list[dict[str, Any]]:
    """Rows for the wanted sample keys of one request: one per sample, ok or error, never dropped."""
    sampling = sampling_json(config)
    settings = settings_hash(config, backend_name)
    has_system = planned.system_prompt is not None or planned.own_system
    system_mode = "none" if not has_system else ("merged" if config.system_mode == "merged" else result.system_mode)
    combined = config.system_combine if planned.system_prompt is not None and planned.own_system else None
    rows = []
    for sample_index, key in enumerate(planned.keys):
        if key not in wanted:
            continue
        if result.error is not None:  # scrubbed here too: an engine's exception text may quote an environment secret
            columns = error_columns(redact_secrets(result.error))
        elif sample_index >= len(result.completions):
            columns = error_columns(f"engine returned {len(result.completions)} of {len(planned.keys)} samples")
        else:
            completion = result.completions[sample_index]
            columns = parse_reply(completion.text, completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)
        rows.append(
            {
                "key": key,
                "round": config.round,
                "prompt_id": planned.record.prompt_id,
                "prompt": planned.record.messages,
                "steering": planned.steering,
                "pair_library": planned.drawn.library if planned.drawn else None,
                "system_prompt_id": planned.drawn.id if planned.drawn else None,
                "system_prompt_hash": text_hash(planned.system_prompt) if planned.system_prompt else None,
                "system_prompt": planned.system_prompt,
                "system_mode": system_mode,
                "system_combine": combined,
                "sample_index": sample_index,
                "model": config.model,
                "backend": backend_name,
                "sampling": sampling,
                "settings_hash": settings,
                "seed": planned.seed,
                "n_fallback": result.n_fallback,
                **columns,
            }
        )
    return rows


@dataclass
class GenerateSummary:
    run_dir: Path
    total_rows: int
    generated_rows: int
    counts: dict[str, dict[str, int]]
    seconds: float
    stale_rows: int = 0  # rows in the folder that this config no longer plans (smaller --limit, edited pair text)
    requests: dict[str, Any] = field(default_factory=dict)  # this run's attempts, retries and failures by reason
    usage: dict[str, Any] = field(default_factory=dict)  # this run's tokens (and cost) by stage and steering: costs.token_costs
    folder: Path | None = None  # where the rows went: <run>/generations or a shard's sub-folder
    pending: dict[str, Any] = field(default_factory=dict)  # batch backends: rows submitted and not collected yet
    budget_line: str | None = None  # costs.Budget.line(): set when a --max-cost / --max-total-tokens cap stopped the run
    dataset_rows: int = 0  # rows of the prompts file's own responses in the folder (steering "dataset")
    dataset_written: int = 0  # of them, written by this pass

    def lines(self) -> list[str]:
        status = self.counts.get("status", {})
        dataset = (
            f"; {self.dataset_rows} from the dataset ({self.dataset_written} new), {self.total_rows - self.dataset_rows} generated"
            if self.dataset_rows
            else ""
        )
        lines = [
            f"{self.folder or layout.GENERATIONS.path(self.run_dir)}: {self.total_rows} rows ({status.get('ok', 0)} ok, "
            f"{status.get('error', 0)} error; {self.generated_rows} new{dataset}) by steering {self.counts.get('steering', {})} "
            f"in {self.seconds:.0f} s"
        ]
        requests = self.requests
        if requests.get("attempts"):
            by_reason = ", ".join(f"{reason} {count}" for reason, count in requests["failed_attempts_by_reason"].items()) or "none"
            errors = ", ".join(f"{reason} {count}" for reason, count in requests["error_rows_by_reason"].items()) or "none"
            lines.append(
                f"requests: {requests['attempts']} attempts, {requests['retries']} retries; failed attempts by reason: "
                f"{by_reason}; gave up on {requests['given_up']}; error rows by reason: {errors}"
            )
        if self.usage.get("total", {}).get("requests"):
            steerings = self.usage["by_stage"].get("generate", {})
            by_steering = "; ".join(f"{s} {u['prompt_tokens']:,} + {u['completion_tokens']:,}" for s, u in sorted(steerings.items()))
            lines.append(f"{cost_line(self.usage)} (by steering, prompt + completion: {by_steering})")
        if self.pending:
            lines.append(
                f"{self.pending['rows']} rows waiting in {len(self.pending['batches'])} batches "
                f"({', '.join(self.pending['batches'])}); `neat-data batch status {self.run_dir}` shows them, the same "
                "command run again collects them"
            )
        if self.budget_line:
            lines.append(self.budget_line)
        return lines

    def result(self) -> StageResult:
        failed = unfinished = None
        if self.total_rows and not self.counts.get("status", {}).get("ok") and not self.pending:
            failed = NeatError(
                "no row succeeded: every row is an error row (reasons above); nothing to score", file=self.folder, exit_code=EXIT_NOTHING_OK
            )
        if self.pending:
            unfinished = NeatError(
                f"{self.pending['rows']} rows wait in batches {', '.join(self.pending['batches'])}; run the same command again "
                "to collect them",
                file=self.run_dir,
                exit_code=EXIT_PENDING,
            )
        elif self.budget_line:  # not finished: a round must not go on with part of its rows; a higher cap continues it
            unfinished = NeatError(
                f"{self.budget_line} (in the recipe: generate.max_cost / generate.max_total_tokens; raising it keeps the run folder)",
                file=self.folder,
            )
        record = read_manifest(self.run_dir).record("generate", GenerateRecord)
        return StageResult(self.lines(), record, self.notes(), failed, unfinished)

    def notes(self) -> list[str]:
        if not self.stale_rows:
            return []
        return [
            f"note: {self.stale_rows} rows in the folder are not planned by this config (smaller --limit or edited pair "
            "text); they are kept — use --overwrite for a folder with only this config's rows"
        ]


def error_reason(error: str) -> str:
    """A short class for an error row's text, for counts: 'failed after 7 attempts: HTTP 500: …' → 'HTTP 500'."""
    text = re.sub(r"^failed after \d+ attempts: ", "", error)
    if text.startswith("engine returned") and " of " in text:
        return "fewer samples than n"
    return re.split(r"[:(]| after ", text, maxsplit=1)[0].strip() or "unknown"


def request_summary(stats: dict[str, int], errors: Counter[str]) -> dict[str, Any]:
    """What this run's requests went through: attempts, retries, failed attempts and error rows by reason."""
    failed_attempts = {name[len("retry_") :]: count for name, count in sorted(stats.items()) if name.startswith("retry_") and count}
    return {
        "attempts": stats.get("requests", 0),
        "retries": stats.get("retries", 0),
        "failed_attempts_by_reason": failed_attempts,
        "given_up": stats.get("failed_requests", 0),
        "error_rows_by_reason": dict(sorted(errors.items())),
    }
