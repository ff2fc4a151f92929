"""Scoring on a pool of Ray actors (`neat-data score --ray-actors N`, extra `ray`): any scorer, N copies.

In:  ScoreItems from the score stage, chunk after chunk (it flushes a shard per chunk, so it resumes).
Out: one ScoreResult per item, in order — the same values the scorer gives in one process.
Each actor builds the run's scorer once (from a factory: `make_scorer` with the same options, e.g. a reward model on the GPU Ray gave it) and is
kept for the whole stage; a chunk is cut into batches of `ray_batch_size` items spread over the pool
(`ray.util.ActorPool`). An exception inside an actor makes that batch's items error rows; an actor that
cannot start at all (bad model path, no memory) stops the stage with one line. Local Ray by default, a
cluster with `RAY_ADDRESS` (see `neat_data.engines.ray_backend.init_ray`).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from neat_data.core.errors import NeatError
from neat_data.scorers.base import ScoreItem, Scorer, ScoreResult


class _ScorerActor:
    def __init__(self, scorer_factory: Callable[[], Scorer]):
        self.scorer = scorer_factory()

    def name(self) -> str:
        return self.scorer.name

    def score(self, items_json: str) -> str:
        items = [ScoreItem(**value) for value in json.loads(items_json)]
        try:
            results = self.scorer.score(items)
        except Exception as error:  # the scorer failed this batch as a whole: its rows become error rows
            reason = error.message if isinstance(error, NeatError) else f"{type(error).__name__}: {error}"
            results = [ScoreResult(None, f"ray actor: {reason}"[:2000])] * len(items)
        return json.dumps([result.__dict__ for result in results])


class RayScorer:
    def __init__(
        self,
        scorer_factory: Callable[[], Scorer],
        *,
        actors: int,
        gpus_per_actor: float | None = None,
        cpus_per_actor: float = 1.0,
        batch_size: int = 64,
    ):
        """`scorer_factory`: a picklable zero-argument callable that builds the scorer inside each actor."""
        from neat_data.engines.ray_backend import init_ray, root_cause

        self.ray, self._started_ray = init_ray()
        gpus = gpus_per_actor
        if gpus is None:  # one GPU per scorer when the cluster has GPUs
            gpus = 1.0 if self.ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        remote = self.ray.remote(num_gpus=gpus, num_cpus=cpus_per_actor)(_ScorerActor)
        self.actors = [remote.remote(scorer_factory) for _ in range(actors)]
        try:
            names = self.ray.get([actor.name.remote() for actor in self.actors])
        except Exception as error:
            self.close()
            raise NeatError(f"ray: a scorer actor could not start: {root_cause(error)}", field="scorer") from None
        self.name = names[0]
        self.batch_size = batch_size

    def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        from ray.util import ActorPool

        batches = [items[start : start + self.batch_size] for start in range(0, len(items), self.batch_size)]
        payloads = [json.dumps([item.__dict__ for item in batch]) for batch in batches]
        results: list[ScoreResult] = []
        answers = ActorPool(self.actors).map(lambda actor, payload: actor.score.remote(payload), payloads)
        for batch in batches:
            try:
                results += [ScoreResult(**value) for value in json.loads(next(answers))]
            except Exception as error:  # the actor died (e.g. out of memory): this batch becomes error rows
                from neat_data.engines.ray_backend import root_cause

                results += [ScoreResult(None, f"ray: {type(error).__name__}: {root_cause(error)}"[:2000])] * len(batch)
        return results

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        self.actors = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False
