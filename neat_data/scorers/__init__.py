"""Scorers behind one narrow protocol (`neat_data.scorers.base.Scorer`): one result per item, in order.

`make_scorer(config, generate_config)` is the one place an implementation is chosen. Torch and
transformers are imported inside the implementations only.
"""

from __future__ import annotations

from typing import Any

from neat_data.scorers.base import Scorer


def make_scorer(config: Any, generation_model: str | None) -> Scorer:
    """`config`: a ScoreConfig. The reference/reward model defaults to the model that generated the run."""
    kind = config.scorer
    if getattr(config, "ray_actors", None):
        from neat_data.scorers.ray_scorer import RayScorer

        return RayScorer(config, generation_model)
    if kind.startswith("python:"):
        from neat_data.scorers.python_fn import PythonScorer

        return PythonScorer(kind)
    from neat_data.errors import NeatError

    if kind not in ("self-contrast", "judge", "reward-model"):
        raise NeatError(f"unknown scorer {kind!r} (self-contrast | reward-model | judge | python:<module>:<function>)", field="scorer")
    model = config.model or generation_model
    if not model:
        raise NeatError("this scorer needs --model (the run's manifest names no generating model)", field="model")
    if kind == "self-contrast":
        from neat_data.scorers.self_contrast import SelfContrastScorer

        return SelfContrastScorer(model, batch_size=config.batch_size, device=config.device, max_length=config.max_length)
    if kind == "judge":
        from neat_data.scorers.judge import make_judge

        return make_judge(config, generation_model)
    if kind == "reward-model":
        from neat_data.scorers.reward_model import RewardModelScorer, VLLMRewardScorer

        if config.backend == "vllm":
            return VLLMRewardScorer(model, max_length=config.max_length)
        return RewardModelScorer(model, batch_size=config.batch_size, device=config.device, max_length=config.max_length)
    raise ValueError(f"unknown scorer {kind!r}")
