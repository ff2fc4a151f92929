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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from neat_data.errors import NeatError
from neat_data.runfolder import RunLock, ShardedTable, count_by, read_manifest, update_manifest
from neat_data.schemas import GENERATIONS, SCORED, check_columns
from neat_data.scorers import make_scorer
from neat_data.scorers.base import ScoreItem, Scorer

IDENTITY_FIELDS = ("scorer", "model", "negative_score", "judge_mode", "judge_template")


class ScoreConfig(BaseModel):
    """Everything the score stage needs; saved in the run's manifest."""

    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder holding generations/.")
    scorer: str = Field("self-contrast", description="self-contrast | reward-model | judge | python:<module>:<function>.")
    model: str | None = Field(None, description="Reward model, or self-contrast reference (default: the generating model).")
    negative_score: Literal["scored", "floor"] = Field("scored", description="floor: negatives rank below every other response.")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="reward-model: vllm = pooling fast path (LLM.classify).")
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    max_length: int | None = Field(None, ge=8, description="Longest sequence scored (longer → error row).")
    flush_every: int = Field(256, ge=1, description="Write a shard every N rows.")
    # judge
    judge_mode: Literal["pointwise", "pairwise"] = Field("pointwise", description="judge: 1–10 ratings, or both-order pairwise win rate.")
    judge_backend: Literal["vllm", "openai"] = Field("openai", description="judge: where the judge model runs.")
    judge_template: str | None = Field(None, description="judge: template YAML (default prompts/judges/<mode>.yaml).")
    base_url: str | None = Field(None, description="judge (openai): endpoint.")
    api_key_env: str = Field("OPENAI_API_KEY", description="judge (openai): environment variable holding the key.")
    max_concurrency: int = Field(64, ge=1, description="judge (openai): requests in flight.")
    # Ray: N copies of the scorer on a pool of actors (local Ray, or the cluster RAY_ADDRESS names)
    ray_actors: int | None = Field(None, ge=1, description="Score on N Ray actors, each with its own copy of the scorer (extra ray).")
    ray_gpus_per_actor: float | None = Field(None, ge=0, description="ray: GPUs per actor (default 1 on a GPU cluster, else 0).")
    ray_cpus_per_actor: float = Field(1.0, gt=0, description="ray: CPUs reserved per actor.")
    ray_batch_size: int = Field(64, ge=1, description="ray: items per actor call.")

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


def pair_texts(rows: list[dict[str, Any]], generate_entry: dict[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    """prompt_id → (positive, negative) steering texts, from the rows, else from the run's pair libraries:
    the row's pair, or for a prompt with only unsteered rows (evaluation) the pair the run's seed draws for it."""
    texts: dict[str, dict[str, str]] = {row["prompt_id"]: {} for row in rows}
    pair_of: dict[str, str] = {}
    for row in rows:
        if row["system_prompt"] and row["steering"] in ("pos", "neg"):
            texts[row["prompt_id"]][row["steering"]] = row["system_prompt"]
            pair_of[row["prompt_id"]] = row["system_prompt_id"]
    missing = {pid for pid, found in texts.items() if len(found) < 2}
    generate_config = generate_entry.get("config", {})
    if missing and generate_config.get("pairs"):
        from neat_data.pairs import choose_pair, load_libraries

        libraries = load_libraries(generate_config["pairs"])
        by_id = {pair.id: pair for library in libraries for pair in library.pairs}
        for pid in missing:
            pair = by_id.get(pair_of[pid]) if pid in pair_of else choose_pair(libraries, generate_config.get("sampling", {}).get("seed", 0), pid)
            if pair is not None:
                texts[pid].setdefault("pos", pair.positive)
                texts[pid].setdefault("neg", pair.negative)
    return {pid: (found.get("pos"), found.get("neg")) for pid, found in texts.items()}


def check_identity(config: ScoreConfig, run_dir: Path) -> None:
    previous = read_manifest(run_dir).get("stages", {}).get("score", {}).get("config")
    if not previous:
        return
    for name, value in config.identity().items():
        if previous.get(name) != value:
            raise NeatError(f"run was scored with {name}={previous.get(name)!r}, now {value!r}; use --overwrite to rescore",
                            file=run_dir / "manifest.json", field=name)


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


def run_score(config: ScoreConfig, *, scorer: Scorer | None = None, overwrite: bool = False, progress: bool = True,
              argv: list[str] | None = None) -> ScoreSummary:
    from tqdm.auto import tqdm

    started = time.time()
    run_dir = Path(config.run)
    generations_dir = run_dir / "generations"
    if not generations_dir.is_dir():
        raise NeatError("no generations/ in this run folder (run `neat-data generate` first)", file=run_dir)
    owns_scorer = scorer is None
    try:
        with RunLock(run_dir):
            generations = ShardedTable(generations_dir, GENERATIONS).read()
            check_columns(generations, GENERATIONS, str(generations_dir))
            scored = ShardedTable(run_dir / "scored", SCORED)
            manifest = read_manifest(run_dir)
            if overwrite:
                if scorer is None:  # a bad scorer or model fails here, before the old scores are deleted
                    scorer = make_scorer(config, manifest.get("stages", {}).get("generate", {}).get("config", {}).get("model"))
                scored.clear()
            else:
                check_identity(config, run_dir)
            done = set(scored.read().column("key").to_pylist())
            rows = generations.to_pylist()
            pending = [row for row in rows if row["key"] not in done]
            entry = {"config": config.model_dump(mode="json"), "command": argv, "finished": False}
            update_manifest(run_dir, "score", entry)
            scored_now = 0
            if pending:
                texts = pair_texts(rows, manifest.get("stages", {}).get("generate", {}))
                if scorer is None:
                    scorer = make_scorer(config, manifest.get("stages", {}).get("generate", {}).get("config", {}).get("model"))
                bar = tqdm(total=len(rows), initial=len(rows) - len(pending), unit="row", desc="score", disable=not progress)
                for chunk in prompt_aligned_chunks(pending, config.flush_every):
                    scored.append(score_rows(chunk, scorer, texts))
                    scored_now += len(chunk)
                    bar.update(len(chunk))
                bar.close()
            final = apply_negative_score(scored.read(), config.negative_score)
            scored.rewrite(final)
            counts = {"score_status": count_by(final, "score_status"), "steering": count_by(final, "steering")}
            entry.update(finished=True, rows=final.num_rows, counts=counts, scorer=final.column("scorer")[0].as_py() if final.num_rows else None,
                         seconds=round(time.time() - started, 2))
            update_manifest(run_dir, "score", entry)
    finally:
        if owns_scorer and scorer is not None and hasattr(scorer, "close"):
            scorer.close()  # e.g. Ray actors
    return ScoreSummary(run_dir=run_dir, rows=final.num_rows, scored_rows=scored_now, counts=counts, seconds=time.time() - started)


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
    """Scored copies of `rows` (one per row, in order): ok rows through the scorer, error rows skipped."""
    ok = [row for row in rows if row["status"] == "ok"]
    items = [ScoreItem(prompt=row["prompt"], response=row["response"], steering=row["steering"],
                       positive_system=texts.get(row["prompt_id"], (None, None))[0],
                       negative_system=texts.get(row["prompt_id"], (None, None))[1], finish_reason=row.get("finish_reason")) for row in ok]
    results = dict(zip((row["key"] for row in ok), scorer.score(items) if items else []))
    out = []
    for row in rows:
        result = results.get(row["key"])
        if result is None:
            extra = {"raw_score": None, "score_status": "skipped", "score_error": "generation failed"}
        elif result.error is not None:
            extra = {"raw_score": None, "score_status": "error", "score_error": result.error}
        else:
            extra = {"raw_score": result.score, "score_status": "ok", "score_error": None}
        out.append({**row, **extra, "score": extra["raw_score"], "scorer": scorer.name, "negative_score": None})
    return out
