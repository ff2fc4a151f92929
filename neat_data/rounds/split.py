"""The prompt split of a `neat-data run`: held-out prompts and each round's fresh slice, decontaminated.

In:  a Recipe (its prompts section, seed, rounds, evaluation suites, fixed data).
Out: `plan_split(recipe)` → `Split` (held-out prompts, then one slice per round, and how many training prompts were
     left out for sharing an 8-gram with an evaluation prompt); `split_files` names the files neat_data.rounds.runner writes.

A seeded hash order of the prompt ids, so the split never changes when the sources are re-read, and held-out prompts
are never trained on. Pure: validates and plans, writes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.prompts_in import ResponseReading
from neat_data.rounds.recipe import Recipe


def split_files(recipe: Recipe, run_dir: Path) -> list[Path]:
    return [layout.HELDOUT.path(run_dir)] + [layout.round_prompts(run_dir, k) for k in range(1, recipe.rounds + 1)]


@dataclass
class Split:
    """[held-out prompts, round 1's, round 2's, …] and what decontamination left out."""

    slices: list[list[Any]]
    decontaminated: int = 0  # training prompts dropped for an 8-gram shared with an evaluation prompt


def _pool(sources: list[str], prompt_column: str | None, limit: int | None, responses: Any = None) -> list[Any]:
    from neat_data.core.prompts_in import load_prompts

    seen: set[str] = set()
    records = []
    for source in sources:
        for record in load_prompts(source, prompt_column=prompt_column, limit=limit, responses=responses).records:
            if record.prompt_id not in seen:  # the same prompt in two sources is one prompt
                seen.add(record.prompt_id)
                records.append(record)
    return records


def evaluation_texts(recipe: Recipe, heldout: list[Any]) -> list[str]:
    """Every prompt the evaluation sees: the held-out prompts and each suite's (training must not have seen them)."""
    from neat_data.safety.decontaminate import record_text
    from neat_data.safety.suites import load_suites, suite_texts

    suites = [suite for suite in load_suites(recipe.evaluate.suites) if suite.source != "heldout"]
    return suite_texts(suites) + [record_text(record) for record in heldout]


def plan_split(recipe: Recipe) -> Split:
    """The held-out prompts and each round's: a seeded hash order of the prompt ids, so the split never changes when
    the source is re-read and held-out prompts are never trained on; with `decontaminate`, training prompts that share
    an 8-gram with an evaluation prompt are left out. Pure: validates, writes nothing."""
    from neat_data.safety.decontaminate import decontaminate

    spec = recipe.prompts
    order = lambda r: hashlib.sha256(f"{recipe.seed}:{r.prompt_id}".encode()).hexdigest()  # noqa: E731
    reading = ResponseReading(spec.layout, spec.pku_rank) if spec.responses == "keep" else None
    pool = sorted(_pool(spec.sources(), spec.prompt_column, spec.limit, reading), key=order)
    if spec.heldout_source:
        candidates = sorted(_pool([spec.heldout_source], spec.prompt_column, None), key=order)
        if len(candidates) < spec.heldout:
            raise NeatError(
                f"{spec.heldout} held-out prompts wanted; the held-out source has {len(candidates)}",
                file=spec.heldout_source,
                field="prompts.heldout",
            )
        heldout = candidates[: spec.heldout]
        taken = {r.prompt_id for r in heldout}
        pool = [r for r in pool if r.prompt_id not in taken]
    else:
        heldout, pool = pool[: spec.heldout], pool[spec.heldout :]
    dropped = 0
    if spec.decontaminate:
        result = decontaminate(pool, evaluation_texts(recipe, heldout))
        pool, dropped = list(result.kept), result.dropped_count
    training = 0 if recipe.fixed_data else recipe.rounds * spec.per_round
    if len(pool) < training:
        sources = ", ".join(spec.sources())
        raise NeatError(
            f"{recipe.rounds} rounds × {spec.per_round} + {spec.heldout} held-out needs "
            f"{training + (0 if spec.heldout_source else spec.heldout)} prompts; the source has "
            f"{len(pool) + (0 if spec.heldout_source else spec.heldout) + dropped}"
            + (f" ({dropped} left out: they share an 8-gram with an evaluation prompt)" if dropped else ""),
            file=sources,
            field="prompts",
        )
    slices = [heldout] + [
        pool[k * spec.per_round : (k + 1) * spec.per_round] if not recipe.fixed_data else [] for k in range(recipe.rounds)
    ]
    return Split(slices=slices, decontaminated=dropped)
