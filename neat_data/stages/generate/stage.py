"""Generate stage: prompts × prompt pairs → one row per response under positive / negative / no steering.

In:  a prompts source (JSONL, Parquet, CSV, hf://…), prompt-pair libraries, a model and a backend.
Out: `<out>/generations/part-*.parquet` (schema `neat_data.core.schemas.GENERATIONS`) and `<out>/manifest.json`.
Run: `neat-data generate --prompts P --pairs harmless --model M --backend vllm --out runs/demo`, or
     `run_generate(GenerateConfig(...))` from Python; `--num-shards N --shard-index i` runs one shard of it.

For each prompt one pair is drawn (deterministic in the seed); `num_pos` samples are drawn under its
positive system prompt, `num_neg` under its negative one, `num_neutral` with no system prompt; each
(prompt, steering) is one request with `n` samples and a seed derived from (seed, prompt_id, steering,
pair). The prompt column always holds the neutral conversation. Re-running the same command generates
only the rows whose content key is missing; `retry_errors` also redoes error rows; `overwrite` starts over.

Order of work, so that bad input costs nothing: every prompt row is validated (a streaming pass) and the model
checked before the run folder is touched; with `overwrite` the backend is started before anything is deleted; the
manifest records a config only once it is valid. Prompts stream through planning, the engine and the shard writer
(`flush_every` rows at a time), so memory does not grow with the number of prompts.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.keys import request_seed
from neat_data.core.manifest import MANIFEST, GenerateRecord, edit_manifest, read_manifest, update_manifest
from neat_data.core.pairs import load_libraries
from neat_data.core.prompts_in import PromptRecord, iter_prompts
from neat_data.core.runfolder import ShardedTable
from neat_data.core.shards import ShardSpec, StageOutput
from neat_data.core.stage import Stage
from neat_data.engines.base import Backend, GenerationRequest
from neat_data.engines.costs import Budget, UsageRecord, UsageTally, batch_discount, request_usage
from neat_data.stages.generate.plan import (
    IDENTITY_FIELDS,
    GenerateConfig,
    GenerateSummary,
    PlannedRequest,
    RedoClass,
    dataset_keys,
    dataset_rows,
    error_reason,
    plan_requests,
    request_summary,
    result_rows,
    to_engine_request,
)
from neat_data.stages.generate.record import _Pass, record_pass, record_spend, stage_entry
from neat_data.stages.generate.redo import REDO_COLUMNS, keys_config, pass_record, redo_keys, redone_sampling

_NO_OVERWRITE = (
    "--overwrite cannot be combined with --num-shards (the other shards share the folder); delete the run folder or use another --out"
)


def check_run_identity(config: GenerateConfig, run_dir: Path) -> None:
    previous = read_manifest(run_dir).stage("generate").config
    if not previous:
        return
    new = config.identity()
    for name in IDENTITY_FIELDS:
        # a field newer than the folder's manifest counts as its default (the folder was made before it existed)
        old = previous.get(name, GenerateConfig.model_fields[name].default)
        if old != new[name]:
            raise NeatError(
                f"run folder was made with a different config ({name}: {json.dumps(old)} here, {json.dumps(new[name])} now); "
                "use --overwrite to start over or another --out",
                file=run_dir / MANIFEST,
                field=name,
            )


def _prompt_digest(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


@dataclass
class _Existing:
    """The rows already in the run: which keys exist (any status) and which are errors."""

    keys: set[str] = field(default_factory=set)
    errors: set[str] = field(default_factory=set)
    redo: set[str] = field(default_factory=set)  # rows `--redo` generates again

    def done(self, key: str, retry_errors: bool) -> bool:
        return key in self.keys and not (retry_errors and key in self.errors) and key not in self.redo


def read_existing(whole: ShardedTable, redo: list[RedoClass] | None = None, redone_with: str | None = None) -> _Existing:
    """The keys already written (`whole`: the stage's table, every shard), the error rows among them, and with `redo`
    the rows of those classes (less those made with the sampling `redone_with`: see generate_redo.redo_keys)."""
    table = whole.read(REDO_COLUMNS if redo else ["status"])
    if not table.num_rows:
        return _Existing()
    keys = table.column("key")
    failed = keys.filter(pc.equal(table.column("status"), "error"))
    return _Existing(keys=set(keys.to_pylist()), errors=set(failed.to_pylist()), redo=redo_keys(table, redo or [], redone_with))


def existing_rows(whole: ShardedTable, config: GenerateConfig, send: GenerateConfig, overwrite: bool) -> _Existing:
    """What a pass finds done (the run and its --dry-run alike): nothing on --overwrite; on --redo, the rows it selects
    are not done, except those this pass made already (a resumed --redo pass goes on where it stopped)."""
    if overwrite:
        return _Existing()
    return read_existing(whole, send.redo, redone_sampling(send, config))


def pending_requests(
    config: GenerateConfig, libraries: list, existing: _Existing, retry_errors: bool, shard: ShardSpec | None
) -> Iterator[PlannedRequest]:
    """The requests a pass sends (the run and its --dry-run alike): every planned request with a row not done, in order."""
    records = (r for r in _records(config, {}, _Plan()) if shard is None or shard.owns(r.prompt_id))
    for planned in plan_requests(config, records, libraries):
        if not all(existing.done(key, retry_errors) for key in planned.keys):
            yield planned


def check_prompt_texts(out: StageOutput, explicit: dict[str, str]) -> None:
    """A prompt_id from the source's own column must keep its text: rows of the same id with another text would be
    "done" and keep the old prompt (content-hash ids cannot collide this way)."""
    if not explicit:
        return
    table = out.whole.read(["prompt_id", "prompt"])
    if not table.num_rows:
        return
    mine = table.filter(pc.is_in(table.column("prompt_id"), pa.array(list(explicit), pa.string())))
    seen: set[str] = set()
    for prompt_id, prompt in zip(mine.column("prompt_id").to_pylist(), mine.column("prompt").to_pylist()):
        if prompt_id in seen:
            continue
        seen.add(prompt_id)
        if _prompt_digest(prompt) != explicit[prompt_id]:
            raise NeatError(
                f"prompt_id '{prompt_id}' has another text than the rows already generated for it; give the new "
                "text a new prompt_id, or use --overwrite",
                file=layout.GENERATIONS.path(out.run_dir),
                field="prompt_id",
            )


@dataclass
class _Plan:
    """What a pass over the prompts found: how many this process owns and, on a resume, what is left to do."""

    prompts: int = 0
    owned: int = 0
    duplicates: int = 0
    planned_rows: int = 0
    done_rows: int = 0  # planned rows already done
    dataset_rows: int = 0  # the prompts file's own responses (steering "dataset"), part of planned_rows
    present_rows: int = 0  # planned rows in the folder, any status
    pending_requests: int = 0


def scan(
    config: GenerateConfig,
    libraries: list,
    shard: ShardSpec | None,
    existing: _Existing | None,
    retry_errors: bool,
    explicit: dict[str, str] | None = None,
) -> _Plan:
    """One streaming pass over the prompts: validates every row (the first bad one is a NeatError), counts, and with
    `existing` what is already done."""
    plan, counts = _Plan(), dict[str, int]()
    owned = (record for record in _records(config, counts, plan) if shard is None or shard.owns(record.prompt_id))
    for record in _counted(owned, plan, explicit):
        if existing is None:
            continue
        present = sum(key in existing.keys for key in dataset_keys(config, record))  # never redone: present is done
        plan.done_rows += present
        plan.present_rows += present
        for planned in plan_requests(config, [record], libraries):
            done = [existing.done(key, retry_errors) for key in planned.keys]
            plan.done_rows += sum(done)
            plan.present_rows += sum(key in existing.keys for key in planned.keys)
            plan.pending_requests += not all(done)
    plan.duplicates = counts.get("duplicates", 0)
    if not plan.prompts:
        raise NeatError("no prompts found", file=config.prompts)
    per_prompt = sum(n for n in (config.num_pos, config.num_neg, config.num_neutral))
    plan.planned_rows = plan.owned * per_prompt + plan.dataset_rows
    if existing is None:
        plan.pending_requests = plan.owned * sum(1 for n in (config.num_pos, config.num_neg, config.num_neutral) if n)
    return plan


def _records(config: GenerateConfig, counts: dict[str, int], plan: _Plan) -> Iterator[PromptRecord]:
    for record in iter_prompts(
        config.prompts,
        prompt_column=config.prompt_column,
        limit=config.limit,
        allow_system=config.system_combine != "refuse",
        counts=counts,
        responses=config.response_reading(),
    ):
        plan.prompts += not record.repeat
        yield record


def _counted(records: Iterator[PromptRecord], plan: _Plan, explicit: dict[str, str] | None) -> Iterator[PromptRecord]:
    for record in records:
        plan.owned += not record.repeat
        plan.dataset_rows += len(record.responses)
        if explicit is not None and record.explicit_id:
            explicit[record.prompt_id] = _prompt_digest(record.messages)
        yield record


def start_backend(config: GenerateConfig, run_dir: Path, shard: ShardSpec | None, progress: bool) -> Backend:
    """The configured backend; a model or engine that cannot start is one NeatError line. Batch backends keep their
    files under <run>/batches/generate and journal their batches in the manifest (a shard: in its own journal file,
    since shard processes would race on the manifest) before any waiting."""
    from neat_data.engines import BACKENDS, make_backend

    batch: dict[str, Any] = {}
    if BACKENDS[config.backend].batch:
        from neat_data.engines.batch_journal import FileBatchJournal, ManifestBatchJournal, state_dir_for

        state = state_dir_for(run_dir, "generate") / (shard.name if shard else "")
        journal = FileBatchJournal(state / "journal.json") if shard else ManifestBatchJournal(run_dir, "generate")
        batch = {"state_dir": state, "journal": journal, "progress": progress}
    try:
        return make_backend(config.backend, config.model, config, seed=config.sampling.seed, **batch)
    except NeatError:
        raise
    except Exception as error:  # transformers/torch raise OSError, ValueError, … for a model that does not load
        raise NeatError(
            f"backend '{config.backend}' could not start: {type(error).__name__}: {' '.join(str(error).split())[:300]}",
            file=config.model,
            field="model",
        ) from None


def forget_batches(run_dir: Path) -> None:
    """--overwrite starts over: earlier batch files and their journal would otherwise answer the new run's requests."""
    import shutil

    from neat_data.engines.batch_journal import state_dir_for

    shutil.rmtree(state_dir_for(run_dir, "generate"), ignore_errors=True)
    if "generate" in read_manifest(run_dir).batches:
        with edit_manifest(run_dir) as manifest:
            manifest.batches.pop("generate", None)


def run_generate(
    config: GenerateConfig,
    *,
    backend: Backend | None = None,
    shard: ShardSpec | None = None,
    retry_errors: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    argv: list[str] | None = None,
) -> GenerateSummary:
    """Generate every missing row of the run (or of one shard of it); returns counts. `backend` defaults to the
    configured one, started only when there is something to generate."""
    started = time.time()
    run_dir = Path(config.out)
    send = config  # what requests are sent with; `config` derives keys, pairs and identity (the folder's own, on --redo)
    explicit: dict[str, str] = {}
    config, libraries, plan = plan_pass(send, shard, retry_errors, overwrite, explicit)
    if backend is None and config.local_model():
        from neat_data.core.models import resolve_model

        resolve_model(config.model)  # a mistyped model stops here, for every backend that loads one
    owns_backend = backend is None
    with StageOutput(run_dir, layout.GENERATIONS, shard) as out:
        try:
            budget, passes = earlier_passes(config, run_dir, overwrite)
            existing, plan, backend = prepare_folder(
                config, send, out, libraries, plan, explicit, backend, retry_errors, overwrite, progress
            )
            # the earlier passes' spend and records go in at the start: a pass killed before its end must not forget them
            entry = {**stage_entry(config, argv, plan, libraries), "budget": budget.record(), "passes": passes}
            out.start(entry, lambda: None if overwrite else check_run_identity(config, run_dir))
            done = _Pass()
            if plan.dataset_rows:
                done.dataset = write_dataset_rows(config, out, existing)
                done.new_keys += done.dataset
            if plan.pending_requests:
                assert backend is not None
                generated = _generate_pending(config, libraries, out, existing, plan, backend, retry_errors, progress, budget, send)
                done = _Pass(generated[0], done.new_keys + generated[1], *generated[2:], dataset=done.dataset)
            passes = [*passes, pass_record(send, backend.name if backend else None, done.generated, len(existing.redo), argv)]
        finally:
            if owns_backend and backend is not None:
                backend.close()
        summary = record_pass(config, out, plan, done, entry, budget, passes, started, argv)
    uncountable = budget.uncountable()
    if uncountable:  # never a cap silently ignored: the pass is recorded, then one line and exit 2
        raise NeatError(uncountable, option="max_total_tokens" if config.max_total_tokens is not None else "max_cost")
    return summary


def plan_pass(
    send: GenerateConfig, shard: ShardSpec | None, retry_errors: bool, overwrite: bool, explicit: dict[str, str] | None = None
) -> tuple[GenerateConfig, list, _Plan]:
    """The checks and the first plan of a pass, the run and its --dry-run alike: options that cannot go together, the
    config keys derive from (on --redo: the folder's), the pair libraries, every prompt row valid; then the folder's
    identity (unless --overwrite). Nothing is written."""
    run_dir = Path(send.out)
    config = check_options(send, run_dir, shard, overwrite)
    libraries = load_libraries(config.pairs)
    plan = scan(config, libraries, shard, None, retry_errors, explicit)  # every row valid before the run folder is touched
    if not overwrite:
        check_run_identity(config, run_dir)
    return config, libraries, plan


def check_options(config: GenerateConfig, run_dir: Path, shard: ShardSpec | None, overwrite: bool) -> GenerateConfig:
    """Options that cannot go together stop here; returns the config keys are derived from (on --redo: the folder's)."""
    if config.redo:
        if overwrite:
            raise NeatError("--redo regenerates some rows of an existing run; it cannot be combined with --overwrite", option="redo")
        config = keys_config(config, run_dir)
    if shard is not None and overwrite:
        raise NeatError(_NO_OVERWRITE, field="overwrite")
    if shard is not None and (config.max_cost is not None or config.max_total_tokens is not None):
        raise NeatError(
            "--max-cost / --max-total-tokens count the whole run: not with --num-shards (each shard would spend its own)",
            option="max_cost" if config.max_cost is not None else "max_total_tokens",
        )
    return config


def earlier_passes(config: GenerateConfig, run_dir: Path, overwrite: bool) -> tuple[Budget, list[dict[str, Any]]]:
    """What earlier passes spent and did (read before this pass's manifest entry replaces theirs): the caps count the run."""
    if not overwrite:
        check_run_identity(config, run_dir)
    previous = GenerateRecord() if overwrite else read_manifest(run_dir).record("generate", GenerateRecord)
    budget = Budget.for_run(config, config, batch_discount(config.backend), previous.budget)
    return budget, list(previous.passes or [])


def prepare_folder(
    config: GenerateConfig,
    send: GenerateConfig,
    out: StageOutput,
    libraries: list,
    plan: _Plan,
    explicit: dict[str, str],
    backend: Backend | None,
    retry_errors: bool,
    overwrite: bool,
    progress: bool,
) -> tuple[_Existing, _Plan, Backend | None]:
    """What is done already (and the plan of what is not), the prompt texts checked against it, and the backend started
    — before --overwrite deletes anything, and before the manifest names a config."""
    existing = existing_rows(out.whole, config, send, overwrite)
    if existing.keys:  # what is already done needs every key; a fresh folder has nothing done (keys cost ~50 µs/prompt)
        plan = scan(config, libraries, out.shard, existing, retry_errors)
    if not overwrite:
        check_prompt_texts(out, explicit)
    if overwrite:
        forget_batches(out.run_dir)
    if backend is None and plan.pending_requests:
        backend = start_backend(config, out.run_dir, out.shard, progress)
    if overwrite:
        out.table.clear()
        update_manifest(out.run_dir, "generate", {})
    return existing, plan, backend


def write_dataset_rows(config: GenerateConfig, out: StageOutput, existing: _Existing) -> int:
    """Write the rows of the prompts file's own responses that the folder lacks (never an engine call; a row present
    is kept, whatever --redo or --retry-errors say); returns how many were written."""
    buffer: list[dict[str, Any]] = []
    written = 0
    for record in _records(config, {}, _Plan()):
        if out.shard is not None and not out.shard.owns(record.prompt_id):
            continue
        buffer.extend(dataset_rows(config, record, {key for key in dataset_keys(config, record) if key not in existing.keys}))
        if len(buffer) >= config.flush_every:
            out.table.append(buffer)
            written += len(buffer)
            buffer = []
    out.table.append(buffer)
    return written + len(buffer)


def _generate_pending(
    config: GenerateConfig,
    libraries: list,
    out: StageOutput,
    existing: _Existing,
    plan: _Plan,
    backend: Backend,
    retry_errors: bool,
    progress: bool,
    budget: Budget,
    send: GenerateConfig,
) -> tuple[int, int, dict[str, Any], UsageTally, dict[str, Any]]:
    """Stream the pending requests through the backend and the shard writer; returns (rows written, rows with a key
    new to the folder, request summary, token usage (a running tally), what a batch backend left pending). Once
    `budget` is reached no further request is handed over (counted as unsent; those in flight finish and are kept).
    Keys come from `config`; requests go out with `send`'s sampling and seed, and rows record `send`'s sampling
    (the same config, except on --redo)."""
    from tqdm.auto import tqdm

    inflight: dict[int, PlannedRequest] = {}  # requests handed to the backend and not answered yet

    def pending() -> Iterator[GenerationRequest]:
        index = 0
        for planned in pending_requests(config, libraries, existing, retry_errors, out.shard):
            if budget.reached():  # nothing more is sent: these rows stay missing, so a later run generates them
                budget.unsent += 1
                continue
            if send.sampling.seed != config.sampling.seed:  # --redo with another --seed: new samples, same keys
                pair_id = planned.pair.id if planned.pair else None
                planned = replace(planned, seed=request_seed(send.sampling.seed, planned.record.prompt_id, planned.steering, pair_id))
            inflight[index] = planned
            index += 1
            yield to_engine_request(planned, send)

    buffer: list[dict[str, Any]] = []
    generated = new_keys = 0
    errors: Counter[str] = Counter()
    usage = UsageTally()
    bar = tqdm(total=plan.planned_rows, initial=plan.done_rows, unit="row", desc="generate", disable=not progress)
    try:
        for index, result in backend.generate(pending(), send.sampling):
            planned = inflight.pop(index)
            rows = result_rows(send, planned, result, backend.name, {k for k in planned.keys if not existing.done(k, retry_errors)})
            for row in rows:
                new_keys += row["key"] not in existing.keys
                if row["status"] == "error":
                    errors[error_reason(row["error"] or "")] += 1
            billed = request_usage(result)
            usage.add(UsageRecord("generate", planned.steering, *billed))
            budget.add(*billed, answered=bool(result.completions))
            buffer.extend(rows)
            bar.update(len(rows))
            if len(buffer) >= config.flush_every:
                record_spend(out, budget)  # before the rows: a kill in between counts answers that were billed, then lost
                out.table.append(buffer)
                generated += len(buffer)
                buffer = []
            elif budget.capped:  # every answer's spend, not each flush's: a kill forgets at most what is in flight (~5 ms)
                record_spend(out, budget)
        record_spend(out, budget)
        out.table.append(buffer)
        generated += len(buffer)
    except BaseException:  # Ctrl-C, or an error: what was answered was billed, whether or not its rows were written
        record_spend(out, budget)
        raise
    finally:
        bar.close()
    waiting = backend.pending
    left = (
        {"rows": sum(len(inflight[index].keys) for index in waiting if index in inflight), "batches": sorted(set(waiting.values()))}
        if waiting
        else {}
    )
    return generated, new_keys, request_summary(dict(backend.stats), errors), usage, left


GENERATE = Stage(
    "generate",
    GenerateConfig,
    lambda config, argv: run_generate(config, argv=argv).result(),
    reads=lambda c: [layout.GENERATIONS.path(Path(c.out))] if c.redo else [Path(c.model)],  # a --redo pass builds on the pass before
    writes=lambda c: [layout.GENERATIONS.path(Path(c.out))],
    record=GenerateRecord,
    recipe_section="generate",
    manifest_entries=lambda c: ["generate"],
)
