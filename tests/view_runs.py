"""Run folders for the viewer tests, made by the real stages (generate with a scripted backend, the python
scorer, rank), so what the page shows can be checked against the tables read back with pyarrow.

The stage run has: a response that is markup (`<script>`, `<img onerror>`), a prompt whose requests fail
(error rows), a prompt whose answers stop at max_tokens (finish "length"), a prompt whose scorer answer is
not a number (score error rows), and pairs both kept and dropped (best-vs-worst with a margin).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.stages.rank.stage import RankConfig, run_rank
from neat_data.stages.score import ScoreConfig, run_score
from neat_data.testing.recording_backend import RecordingBackend

MARKUP = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold?</b>'
QUESTIONS = [
    "How do I boil an egg?",
    "What is the capital of France?",
    "Show me <i>some</i> HTML please.",
    "Tell me a joke. [[fail]]",
    "Write a long story. [[long]]",
    "Rate this. [[noscore]]",
]


def score_by_length(prompts, responses):
    """Score = length / 10; None (a score error row) for answers to the [[noscore]] prompt."""
    return [None if "[[noscore]]" in prompt[-1]["content"] else len(response) / 10 for prompt, response in zip(prompts, responses)]


class ScriptedBackend(RecordingBackend):
    """RecordingBackend whose answers to a [[long]] prompt stop at max_tokens (finish_reason "length")."""

    def generate(self, requests, sampling):
        requests = list(requests)  # the stage streams requests; this test backend looks back at them by index
        for index, result in super().generate(requests, sampling):
            if "[[long]]" in requests[index].messages[-1]["content"]:
                result.completions = [
                    dataclasses.replace(c, finish_reason="length", completion_tokens=sampling.max_tokens) for c in result.completions
                ]
            yield index, result


def reply(messages, sample, seed):
    user = messages[-1]["content"]
    if "HTML" in user and sample == 0:
        return MARKUP
    if "[[long]]" in user:  # cut at max_tokens, and longer than the smallest page text limit (100)
        return f"Once upon a time (sample {sample}) " + "there was a story that went on " * (8 + seed % 5)
    return f"answer {sample} (seed {seed % 1000}) to: {user}" + " more" * (seed % 7)


def make_stage_run(folder: Path, *, dropped_table: bool) -> Path:
    """generate → score → rank into `folder`; without `dropped_table`, ranked/dropped.parquet (which the rank stage
    writes) is removed, as in a run folder made before rank recorded each dropped pair."""
    prompts = folder.parent / f"{folder.name}-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS), encoding="utf-8")
    backend = ScriptedBackend(reply=reply, fail_when=lambda m: "HTTP 500 after 6 attempts" if "[[fail]]" in m[-1]["content"] else None)
    run_generate(
        GenerateConfig(prompts=str(prompts), model="fake", out=folder, num_pos=2, num_neg=2, sampling=Sampling(max_tokens=16)),
        backend=backend,
        progress=False,
    )
    run_score(ScoreConfig(run=folder, scorer="python:view_runs:score_by_length"), progress=False)
    run_rank(RankConfig(run=folder, pairs="best-vs-worst", min_margin=1.0))
    if not dropped_table:
        (folder / "ranked" / "dropped.parquet").unlink()
    return folder


def scored_rows(folder: Path) -> list[dict]:
    return pq.read_table(folder / "scored").to_pylist()


def prompt_title(row: dict) -> str:
    return row["prompt"][-1]["content"]


def kept_pairs(folder: Path) -> list[dict]:
    return pq.read_table(folder / "ranked" / "pairs.parquet").to_pylist()


def ranks(folder: Path) -> dict[str, int]:
    table = pq.read_table(folder / "ranked" / "lists.parquet")
    return {key: position + 1 for keys in table.column("keys").to_pylist() for position, key in enumerate(keys)}


def truncated_prompts(folder: Path) -> set[str]:
    table = pq.read_table(folder / "scored", columns=["prompt_id", "finish_reason"])
    return set(table.filter(pc.equal(table.column("finish_reason"), "length")).column("prompt_id").to_pylist())
