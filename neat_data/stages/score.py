"""Score stage: generations → the same rows plus `score`, `raw_score`, `scorer`, `negative_score`, `score_status`.

In:  `<run>/generations/` (schema GENERATIONS). Out: `<run>/scored/part-*.parquet` (schema SCORED) and the
`score` entry of `<run>/manifest.json`.
Run: `neat-data score runs/demo --scorer self-contrast` (or reward-model --model RM, or python:mod:fn).

Every response is scored as an answer to the **neutral** prompt (the steering system prompt is removed;
self-contrast uses the pair's two steering texts by definition). Error rows of the generations pass
through with `score_status = skipped`; a row the scorer cannot score gets `score_status = error` and the
reason. With `negative_score = floor` every negative-prompt response gets one constant score below every
other response of the run (the paper's "constant"); `raw_score` keeps the scorer's value. Resumable like
generate: rows already scored (by content key) are skipped; `overwrite` starts over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ConfigDict, Field

from neat_data.core import layout
from neat_data.core.errors import EXIT_PENDING, NeatError, redact_secrets
from neat_data.core.lineage import check_read, require_current, table_digest
from neat_data.core.manifest import MANIFEST, GenerateRecord, Manifest, ScoreRecord, edit_manifest, read_manifest, update_manifest
from neat_data.core.runfolder import count_by
from neat_data.core.schemas import GENERATIONS, SCORED, check_columns
from neat_data.core.shards import ShardSpec, StageOutput, refuse_while_writing
from neat_data.core.stage import Stage, StageResult
from neat_data.engines import BACKENDS
from neat_data.engines.costs import PriceOptions, batch_discount, cost_line, token_costs
from neat_data.scorers import ScorerOptions, make_scorer
from neat_data.scorers.base import ScoreItem, Scorer

IDENTITY_FIELDS = ("scorer", "model", "negative_score", "judge_mode", "judge_template")
NegativeScore = Literal["scored", "floor"]


class ScoreConfig(ScorerOptions, PriceOptions):
    """Everything the score stage needs; saved in the run's manifest. The scorer's own options (and the judge's
    backend options) are inherited from `neat_data.scorers.ScorerOptions`."""

    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder holding generations/.")
    negative_score: NegativeScore = Field(
        "scored", description="floor: every negative-prompt response ranks below every other one (a constant score)."
    )
    flush_every: int = Field(256, ge=1, description="Write a shard every N rows (a kill loses at most these).")

    def identity(self) -> dict[str, Any]:
        dumped = self.model_dump(mode="json")
        return {name: dumped[name] for name in IDENTITY_FIELDS}


@dataclass
class ScoreSummary:
    run_dir: Path
    rows: int
    scored_rows: int
    counts: dict[str, dict[str, int]]
    seconds: float
    folder: Path | None = None  # <run>/scored, or a shard's sub-folder
    pending_rows: int = 0  # a batch judge's rows submitted and not answered yet
    usage: dict[str, Any] = field(default_factory=dict)  # an LLM judge's tokens and cost (costs.token_costs)
    ungenerated_rows: int = 0  # generation rows still waiting in generate's batches: not here to score yet

    def line(self) -> str:
        line = (
            f"{self.folder or layout.SCORED.path(self.run_dir)}: {self.rows} rows ({self.scored_rows} newly scored) "
            f"{self.counts['score_status']} in {self.seconds:.0f} s"
        )
        if self.usage.get("total", {}).get("requests"):
            line += f"; judge {cost_line(self.usage)}"
        if self.ungenerated_rows:
            line += (
                f"; {self.ungenerated_rows} generation rows still wait in generate's batches and are not scored: run the same "
                "generate command again to collect them, then score again"
            )
        if self.pending_rows:
            line += (
                f"; {self.pending_rows} rows wait for the batch judge (`neat-data batch status {self.run_dir}`; the same "
                "command run again collects them)"
            )
        return line

    def result(self) -> StageResult:
        waiting = f"{self.pending_rows} rows wait for the batch judge; run the same command again to collect them"
        unfinished = NeatError(waiting, file=self.run_dir, exit_code=EXIT_PENDING) if self.pending_rows else None
        return StageResult([self.line()], read_manifest(self.run_dir).record("score", ScoreRecord), unfinished=unfinished)


def pair_texts(rows: list[dict[str, Any]], generate: GenerateRecord) -> dict[str, tuple[str | None, str | None]]:
    """prompt_id → (positive, negative) steering texts, from the rows, else from the run's pair libraries: the pair a
    row names (an unsteered row names the pair drawn for its prompt), or for rows written before unsteered rows named
    it (evaluation: a prompt with only unsteered rows) the pair the run's seed draws for the prompt."""
    texts: dict[str, dict[str, str]] = {row["prompt_id"]: {} for row in rows}
    pair_of: dict[str, str] = {}
    for row in rows:
        if row["system_prompt"] and row["steering"] in ("pos", "neg"):
            texts[row["prompt_id"]][row["steering"]] = row["system_prompt"]
        if row["system_prompt_id"]:
            pair_of[row["prompt_id"]] = row["system_prompt_id"]
    missing = {pid for pid, found in texts.items() if len(found) < 2}
    if missing and generate.pairs:
        from neat_data.core.pairs import choose_pair, load_libraries

        libraries = load_libraries(generate.pairs)
        by_id = {pair.id: pair for library in libraries for pair in library.pairs}
        for pid in missing:
            pair = by_id.get(pair_of[pid]) if pid in pair_of else choose_pair(libraries, generate.seed, pid)
            if pair is not None:
                texts[pid].setdefault("pos", pair.positive)
                texts[pid].setdefault("neg", pair.negative)
    return {pid: (found.get("pos"), found.get("neg")) for pid, found in texts.items()}


def check_identity(config: ScoreConfig, run_dir: Path) -> None:
    previous = read_manifest(run_dir).stage("score").config
    if not previous:
        return
    for name, value in config.identity().items():
        if previous.get(name) != value:
            raise NeatError(
                f"run was scored with {name}={previous.get(name)!r}, now {value!r}; use --overwrite to rescore",
                file=run_dir / MANIFEST,
                field=name,
            )


def apply_negative_score(table: pa.Table, mode: str) -> pa.Table:
    """`score` = `raw_score`, or for `floor`: one constant below every non-negative score for all negatives."""
    rows = table.to_pylist()
    floor = None
    if mode == "floor":
        others = [r["raw_score"] for r in rows if r["steering"] != "neg" and r["raw_score"] is not None]
        floor = (min(others) if others else 0.0) - 1.0
    for row in rows:
        if row["score_status"] != "ok":
            row["score"] = None
        elif floor is not None and row["steering"] == "neg":
            row["score"] = floor
        else:
            row["score"] = row["raw_score"]
        row["negative_score"] = mode
    return pa.Table.from_pylist(rows, schema=SCORED)


def current_scores(out: StageOutput, generations: pa.Table) -> set[str]:
    """Keys whose scored row scored the generation row as it is now. A row that `generate --retry-errors` replaced
    (an error that is now ok, same key) or `generate --redo` generated again (another settings_hash) is not among
    them, so it is scored again: a score follows the row it scored."""
    names = ["status", "response", "settings_hash"]
    scored = out.whole.read(names)
    if not scored.num_rows:
        return set()
    then = dict(zip(scored.column("key").to_pylist(), zip(*(scored.column(name).to_pylist() for name in names))))
    now = zip(generations.column("key").to_pylist(), zip(*(generations.column(name).to_pylist() for name in names)))
    return {key for key, row in now if then.get(key) == row}


def run_score(
    config: ScoreConfig,
    *,
    scorer: Scorer | None = None,
    shard: ShardSpec | None = None,
    overwrite: bool = False,
    progress: bool = True,
    argv: list[str] | None = None,
) -> ScoreSummary:
    """Score every generation row not scored yet (or of one shard's prompts); returns counts. The scorer is built —
    and its model checked — before anything is recorded or, with `overwrite`, deleted."""
    started = time.time()
    run_dir = Path(config.run)
    check_can_score(run_dir, shard, overwrite)
    owns_scorer = scorer is None
    try:
        with StageOutput(run_dir, layout.SCORED, shard) as out:
            # generations a killed generate left, or that changed since it finished, are refused (core/lineage.py); rows
            # waiting in generate's batches are not: those here are scored, the summary says what waits, and rank
            # refuses until generate has collected them and score has run again
            manifest = require_current(run_dir, layout.GENERATIONS, shard=shard, allow_pending=True)
            generations, seen = read_generations(run_dir, shard)
            rows, pending, scorer = plan_scoring(config, out, generations, manifest, shard, overwrite, scorer)
            entry = {"config": config.model_dump(mode="json"), "command": argv}
            out.start(entry, lambda: None if overwrite else check_identity(config, run_dir))
            scored_now = 0
            if pending:
                assert scorer is not None
                texts = pair_texts(rows, manifest.record("generate", GenerateRecord))
                scored_now = score_pending(config, out, scorer, texts, pending, total=len(rows), progress=progress)
            final = final_table(config, out, generations, shard)
            seconds = time.time() - started
            record = score_record(config, final, scorer, seconds=seconds)
            if shard is None:  # a shard's part of the table: merge records the whole one
                record.update(reads={layout.GENERATIONS.name: seen}, wrote={layout.SCORED.name: table_digest(layout.SCORED, final)})
            waiting = len(pending) - scored_now
            record_outcome(run_dir, out, entry, record, waiting=waiting, scored_now=scored_now, argv=argv)
    finally:
        if owns_scorer and scorer is not None and hasattr(scorer, "close"):
            scorer.close()  # e.g. Ray actors, a vLLM engine
    return ScoreSummary(
        run_dir=run_dir,
        rows=final.num_rows,
        scored_rows=scored_now,
        counts=record["counts"],
        seconds=seconds,
        folder=out.folder,
        pending_rows=waiting,
        usage=record.get("usage") or {},
        ungenerated_rows=int((manifest.record("generate", GenerateRecord).pending or {}).get("rows") or 0),
    )


def check_can_score(run_dir: Path, shard: ShardSpec | None, overwrite: bool) -> None:
    """The run has generations; a shard is not combined with --overwrite and waits for no generate writer."""
    if not layout.GENERATIONS.path(run_dir).is_dir():
        raise NeatError("no generations/ in this run folder (run `neat-data generate` first)", file=run_dir)
    if shard is not None:
        if overwrite:
            raise NeatError(
                "--overwrite cannot be combined with --num-shards (the other shards share the folder); delete scored/ "
                "or use another run folder",
                field="overwrite",
            )
        refuse_while_writing(run_dir, layout.GENERATIONS)


def read_generations(run_dir: Path, shard: ShardSpec | None) -> tuple[pa.Table, str]:
    """The run's generation rows (checked against GENERATIONS), or the rows of the prompts `shard` owns, and the digest
    of the whole table as read (checked against the one generate recorded)."""
    generations = layout.GENERATIONS.rows(run_dir).read()
    check_columns(generations, GENERATIONS, str(layout.GENERATIONS.path(run_dir)))
    seen = check_read(run_dir, layout.GENERATIONS, generations)
    if shard is not None:
        generations = generations.filter(pa.array([shard.owns(pid) for pid in generations.column("prompt_id").to_pylist()], pa.bool_()))
    return generations, seen


def plan_scoring(
    config: ScoreConfig,
    out: StageOutput,
    generations: pa.Table,
    manifest: Manifest,
    shard: ShardSpec | None,
    overwrite: bool,
    scorer: Scorer | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Scorer | None]:
    """(every row, the rows still to score, the scorer). In this order: the identity is checked, the pending rows
    found, a bad scorer or model fails, and only then, with `overwrite`, the old scores are deleted."""
    run_dir = Path(config.run)
    generation_model = manifest.record("generate", GenerateRecord).model
    if not overwrite:
        check_identity(config, run_dir)
    done = set() if overwrite else current_scores(out, generations)
    rows = generations.to_pylist()
    pending = [row for row in rows if row["key"] not in done]
    batch_judge = is_batch_judge(config)
    if overwrite and batch_judge:
        forget_score_batches(run_dir, shard)
    if scorer is None and pending:  # a bad scorer or model fails here, before anything changes
        scorer = make_scorer(config, generation_model, **batch_state(run_dir, shard) if batch_judge else {})
    if overwrite:
        out.table.clear()
        update_manifest(run_dir, "score", {})
    return rows, pending, scorer


def is_batch_judge(config: ScoreConfig) -> bool:
    return config.scorer == "judge" and BACKENDS[config.judge_backend].batch


def score_pending(
    config: ScoreConfig,
    out: StageOutput,
    scorer: Scorer,
    texts: dict[str, tuple[str | None, str | None]],
    pending: list[dict[str, Any]],
    *,
    total: int,
    progress: bool,
) -> int:
    """Score `pending` chunk by chunk, a shard written per chunk (a kill loses at most one); returns the rows written."""
    from tqdm.auto import tqdm

    scored_now = 0
    bar = tqdm(total=total, initial=total - len(pending), unit="row", desc="score", disable=not progress)
    # a batch judge gets every pending row at once: one batch of them, not one day-long wait per chunk
    for chunk in prompt_aligned_chunks(pending, len(pending) if is_batch_judge(config) else config.flush_every):
        written = score_rows(chunk, scorer, texts)
        out.table.append(written)
        scored_now += len(written)
        bar.update(len(written))
    bar.close()
    return scored_now


def final_table(config: ScoreConfig, out: StageOutput, generations: pa.Table, shard: ShardSpec | None) -> pa.Table:
    """The whole run's scored table, with the negative-score rule applied (a shard: its compacted table's counting columns;
    the floor is a constant below every response of the run, which one shard cannot know: merge applies it)."""
    if shard is not None:
        out.table.compact()
        return out.table.read(["score_status", "steering", "scorer"])
    final = out.table.read()
    final = final.filter(pc.is_in(final.column("key"), generations.column("key")))  # rows no generation holds any more
    final = apply_negative_score(final, config.negative_score)
    out.table.rewrite(final)
    return final


def score_record(config: ScoreConfig, final: pa.Table, scorer: Scorer | None, *, seconds: float) -> dict[str, Any]:
    """What the manifest records: rows, counts, seconds, the scorer's name and an LLM judge's usage (and cost)."""
    counts = {"score_status": count_by(final, "score_status"), "steering": count_by(final, "steering")}
    record: dict[str, Any] = {"rows": final.num_rows, "counts": counts, "seconds": round(seconds, 2)}
    record["scorer"] = final.column("scorer")[0].as_py() if final.num_rows else None
    usage = getattr(scorer, "usage", None)  # an LLM judge's tokens (and cost, with --price-in/--price-out)
    if usage:
        record["usage"] = token_costs(
            usage, price_in=config.price_in, price_out=config.price_out, discount=batch_discount(config.judge_backend)
        )
    return record


def record_outcome(
    run_dir: Path,
    out: StageOutput,
    entry: dict[str, Any],
    record: dict[str, Any],
    *,
    waiting: int,
    scored_now: int,
    argv: list[str] | None,
) -> None:
    """Finish the stage, or — rows a batch judge has not answered yet — record it as not finished: the same command
    run again collects them."""
    if waiting:
        previous = read_manifest(run_dir).stages.get("score")
        update_manifest(
            run_dir, "score", {**(previous.entry() if previous else entry), **record, "pending_rows": waiting, "finished": False}
        )
    else:
        counting = {name: value for name, value in record.items() if name != "scorer"}
        out.finish({**entry, **record}, {**counting, "scored_rows": scored_now, "command": argv})


def batch_state(run_dir: Path, shard: ShardSpec | None) -> dict[str, Any]:
    """A batch judge's files (<run>/batches/score) and its journal: the manifest, or for a shard its own file."""
    from neat_data.engines.batch_journal import FileBatchJournal, ManifestBatchJournal, state_dir_for

    state = state_dir_for(run_dir, "score") / (shard.name if shard else "")
    return {"state_dir": state, "journal": FileBatchJournal(state / "journal.json") if shard else ManifestBatchJournal(run_dir, "score")}


def forget_score_batches(run_dir: Path, shard: ShardSpec | None) -> None:
    import shutil

    from neat_data.engines.batch_journal import state_dir_for

    shutil.rmtree(state_dir_for(run_dir, "score"), ignore_errors=True)
    if "score" in read_manifest(run_dir).batches:
        with edit_manifest(run_dir) as manifest:
            manifest.batches.pop("score", None)


def prompt_aligned_chunks(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Chunks of about `size` rows that never split a prompt's responses (pairwise judging needs them together)."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    chunks: list[list[dict[str, Any]]] = [[]]
    for group in by_prompt.values():
        if chunks[-1] and len(chunks[-1]) + len(group) > size:
            chunks.append([])
        chunks[-1].extend(group)
    return [chunk for chunk in chunks if chunk]


def score_rows(rows: list[dict[str, Any]], scorer: Scorer, texts: dict[str, tuple[str | None, str | None]]) -> list[dict[str, Any]]:
    """Scored copies of `rows` (one per row, in order): ok rows through the scorer, error rows skipped; rows a batch
    judge left pending are left out (no row: the same command run again attaches to the batch)."""
    ok = [row for row in rows if row["status"] == "ok"]
    items = [
        ScoreItem(
            prompt=row["prompt"],
            response=row["response"],
            steering=row["steering"],
            positive_system=texts.get(row["prompt_id"], (None, None))[0],
            negative_system=texts.get(row["prompt_id"], (None, None))[1],
            finish_reason=row.get("finish_reason"),
        )
        for row in ok
    ]
    results = dict(zip((row["key"] for row in ok), scorer.score(items) if items else []))
    out = []
    for row in rows:
        result = results.get(row["key"])
        if result is not None and result.pending:  # a batch judge has not answered yet: the next run collects it
            continue
        if result is None:
            extra = {"raw_score": None, "score_status": "skipped", "score_error": "generation failed"}
        elif result.error is not None:
            extra = {"raw_score": None, "score_status": "error", "score_error": redact_secrets(result.error)}
        else:
            extra = {"raw_score": result.score, "score_status": "ok", "score_error": None}
        out.append({**row, **extra, "score": extra["raw_score"], "scorer": scorer.name, "negative_score": None})
    return out


SCORE = Stage(
    "score",
    ScoreConfig,
    lambda config, argv: run_score(config, argv=argv).result(),
    reads=lambda c: [layout.GENERATIONS.path(c.run)],
    writes=lambda c: [layout.SCORED.path(c.run)],
    record=ScoreRecord,
    recipe_section="score",
    manifest_entries=lambda c: ["score"],
)
