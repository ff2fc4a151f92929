"""Scorers behind one narrow protocol (`neat_data.scorers.base.Scorer`): one result per item, in order.

`ScorerOptions` holds what choosing and building a scorer needs (a score config inherits it); `make_scorer` is the
one place an implementation is chosen. The LLM judge's backends take the same options models as generation
(`VLLMOptions`, `OpenAIOptions`, `OpenAIBatchOptions`, inherited here). Torch and transformers are imported inside the implementations only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import Field, field_validator

from neat_data.engines.base import narrow
from neat_data.engines.openai_backend import OpenAIOptions
from neat_data.engines.openai_batch import OpenAIBatchOptions
from neat_data.engines.vllm_backend import VLLMOptions
from neat_data.scorers.base import Scorer
from neat_data.scorers.judge import JudgeBackendName, JudgeMode

if TYPE_CHECKING:
    from neat_data.engines.batch_journal import BatchJournal

ScorerName = Literal["self-contrast", "reward-model", "judge"]  # and python:<module>:<function>, a user's callable
SCORER_HELP = " | ".join([*get_args(ScorerName), "python:<module>:<function>"])
_PYTHON_SCORER = re.compile(r"^python:[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ScorerOptions(VLLMOptions, OpenAIOptions, OpenAIBatchOptions):
    """Which scorer, on which model and device; the judge's backend options are the generate stage's own."""

    scorer: str = Field("self-contrast", description=f"{SCORER_HELP}.")
    model: str | None = Field(
        None, description="Reward model, judge, or self-contrast reference (default: the model that generated the run)."
    )
    backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="reward-model: vllm = the pooling fast path (LLM.classify); self-contrast: vllm = prompt log-probs at engine speed.",
    )
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    max_length: int | None = Field(None, ge=8, description="Longest sequence scored; longer → error row.")
    judge_mode: JudgeMode = Field("pointwise", description="judge: 1–10 rating per response, or pairwise win rate with both orders judged.")
    judge_backend: JudgeBackendName = Field(
        "openai",
        description="judge: where the judge model runs (openai: --base-url; openai-batch: the Batch API, half price, within 24 h).",
    )
    judge_template: str | None = Field(None, description="judge: template YAML (default prompts/judges/<mode>.yaml).")
    # N copies of the scorer on a pool of Ray actors (local Ray, or the cluster RAY_ADDRESS names)
    ray_actors: int | None = Field(
        None, ge=1, description="Score on N Ray actors, each with its own copy of the scorer; RAY_ADDRESS picks the cluster."
    )
    ray_gpus_per_actor: float | None = Field(None, ge=0, description="ray: GPUs per actor (default 1 on a GPU cluster, else 0).")
    ray_cpus_per_actor: float = Field(1.0, gt=0, description="ray: CPUs reserved per actor.")
    ray_batch_size: int = Field(64, ge=1, description="ray: items per actor call.")

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, value: str) -> str:
        if value in get_args(ScorerName) or _PYTHON_SCORER.match(value):
            return value
        raise ValueError(f"unknown scorer {value!r} ({SCORER_HELP})")


def ray_gpus_per_actor(options: ScorerOptions) -> float | None:
    """--ray-gpus-per-actor, else for self-contrast on a tensor-parallel vLLM engine its GPUs (it runs inside the actor),
    else None (RayScorer: 1 on a GPU cluster, 0 on CPUs)."""
    if options.ray_gpus_per_actor is not None:
        return options.ray_gpus_per_actor
    if options.scorer == "self-contrast" and options.backend == "vllm" and options.tensor_parallel_size > 1:
        return float(options.tensor_parallel_size)
    return None


def make_scorer(
    options: ScorerOptions, generation_model: str | None, *, state_dir: Path | None = None, journal: BatchJournal | None = None
) -> Scorer:
    """The scorer `options` names. The reference/reward/judge model defaults to the model that generated the run.
    `state_dir`/`journal`: the batch files and journal of a judge on openai-batch (e.g. <run>/batches/score)."""
    if options.ray_actors:
        import functools

        from neat_data.scorers.ray_scorer import RayScorer

        # each actor builds the same scorer in one process (a plain ScorerOptions: actors need no stage module)
        single = narrow(options, ScorerOptions, ray_actors=None)
        return RayScorer(
            functools.partial(make_scorer, single, generation_model),
            actors=options.ray_actors,
            gpus_per_actor=ray_gpus_per_actor(options),
            cpus_per_actor=options.ray_cpus_per_actor,
            batch_size=options.ray_batch_size,
        )
    kind = options.scorer
    if kind.startswith("python:"):
        from neat_data.scorers.python_fn import PythonScorer

        return PythonScorer(kind)
    from neat_data.core.errors import NeatError

    model = options.model or generation_model
    if not model:
        raise NeatError("this scorer needs --model (the run's manifest names no generating model)", field="model")
    return BUILDERS[kind](options, model, state_dir, journal)


def _engine_options(options: ScorerOptions) -> VLLMOptions:
    """A scorer's own vLLM engine takes the config's VLLMOptions fields (dtype, max_model_len, kv_cache_gb, …)."""
    return narrow(options, VLLMOptions)


def _self_contrast(options: ScorerOptions, model: str, state_dir: Path | None, journal: BatchJournal | None) -> Scorer:
    from neat_data.scorers.self_contrast import SelfContrastScorer, VLLMSelfContrastScorer

    if options.backend == "vllm":
        return VLLMSelfContrastScorer(model, options=_engine_options(options), max_length=options.max_length)
    return SelfContrastScorer(model, batch_size=options.batch_size, device=options.device, max_length=options.max_length)


def _judge(options: ScorerOptions, model: str, state_dir: Path | None, journal: BatchJournal | None) -> Scorer:
    from neat_data.engines import BackendOptions
    from neat_data.scorers.judge import make_judge

    # the judge's backend options are the ones ScorerOptions inherits from the generation backends (vLLM, openai,
    # openai-batch), under the same names; one factory builds every backend
    judge_fields = set(VLLMOptions.model_fields) | set(OpenAIOptions.model_fields) | set(OpenAIBatchOptions.model_fields)
    backend_options = BackendOptions.model_validate(options.model_dump(include=judge_fields))
    return make_judge(
        model,
        options.judge_backend,
        backend_options,
        mode=options.judge_mode,
        template=options.judge_template,
        state_dir=state_dir,
        journal=journal,
    )


def _reward_model(options: ScorerOptions, model: str, state_dir: Path | None, journal: BatchJournal | None) -> Scorer:
    from neat_data.scorers.reward_model import RewardModelScorer, VLLMRewardScorer

    if options.backend == "vllm":
        return VLLMRewardScorer(model, max_length=options.max_length, options=_engine_options(options))
    return RewardModelScorer(model, batch_size=options.batch_size, device=options.device, max_length=options.max_length)


# One builder per name of ScorerName (checked at import: a name without one cannot be offered).
BUILDERS: dict[str, Callable[[ScorerOptions, str, Path | None, BatchJournal | None], Scorer]] = {
    "self-contrast": _self_contrast,
    "judge": _judge,
    "reward-model": _reward_model,
}
assert set(BUILDERS) == set(get_args(ScorerName)), "scorer names drifted"
