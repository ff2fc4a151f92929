"""Ray Data backend (`--backend ray`, extra `ray`): our vLLM backend in a pool of Ray actors.

In:  the generate stage's requests (planned by the driver, so content keys and seeds are exactly the
     single-process ones) as a Ray dataset, one row per (prompt, steering) request.
Out: (index, RequestResult) per request, streamed back as actors finish batches; run_generate turns them
     into rows and flushes shards as usual (resumable, same schema; `backend` column = "ray").
Run: `neat-data generate … --backend ray --ray-actors 8 [--tensor-parallel-size 2]`; local Ray by
     default (`ray.init()`), a cluster when `RAY_ADDRESS` is set (e.g. ray://head:10001 or auto).

`map_batches` runs `_EngineActor` with `compute=ActorPoolStrategy(size=ray_actors)`: each actor builds one
VLLMBackend (one engine, kept for the whole job) and answers batches of `ray_batch_size` requests. GPUs per
actor default to `tensor_parallel_size` when the cluster has GPUs (vLLM then runs tensor parallel inside
the actor on the GPUs Ray assigned to it), else 0 (CPU). Failure handling, so that a bad row never kills
the job: the VLLMBackend already turns a bad request into an error result; an exception escaping it turns
that batch into error results; if the Ray job itself dies (actors cannot start, the cluster is lost), every
request not yet answered becomes an error result, which `--retry-errors` redoes later.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.errors import NeatError
from neat_data.engines.base import Backend, Completion, GenerationRequest, RequestResult, Sampling, narrow
from neat_data.engines.vllm_backend import VLLMOptions


class RayOptions(BaseModel):
    """Ray Data options (backend ray); each actor's engine takes the VLLMOptions of the same config."""

    model_config = ConfigDict(extra="forbid")

    ray_actors: int = Field(1, ge=1, description="ray: engine actors (one vLLM engine each); RAY_ADDRESS picks the cluster.")
    ray_gpus_per_actor: float | None = Field(
        None, ge=0, description="ray: GPUs per actor (default: --tensor-parallel-size on a GPU cluster, else 0)."
    )
    ray_cpus_per_actor: float = Field(1.0, gt=0, description="ray: CPUs reserved per actor.")
    ray_batch_size: int = Field(64, ge=1, description="ray: requests per actor call (results stream back per batch).")


def _vllm_engine(model_path: str, model_label: str, options: VLLMOptions, seed: int) -> Any:
    """Runs inside the actor: the same VLLMBackend the single-process path uses."""
    from neat_data.engines.vllm_backend import VLLMBackend

    return VLLMBackend(model_path, model_label=model_label, options=options, seed=seed)


def _encode_result(result: RequestResult) -> str:
    return json.dumps(
        {
            "completions": [c.__dict__ for c in result.completions],
            "error": result.error,
            "system_mode": result.system_mode,
            "n_fallback": result.n_fallback,
        }
    )


def _decode_result(text: str) -> RequestResult:
    value = json.loads(text)
    return RequestResult(
        completions=[Completion(**c) for c in value["completions"]],
        error=value["error"],
        system_mode=value["system_mode"],
        n_fallback=value["n_fallback"],
    )


def root_cause(error: Exception) -> str:
    """The `Type: message` line that ends a Ray error's remote traceback (else its first line), without colours."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    named = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*: ", line)]
    return (named or [line for line in lines if line] or [type(error).__name__])[-1 if named else 0]


def init_ray() -> tuple[Any, bool]:
    """(the ray module, whether this call started Ray). Local Ray unless `RAY_ADDRESS` names a cluster."""
    try:
        import ray
    except ImportError:
        raise NeatError("Ray is not installed: pip install 'neat-data[ray]'", field="backend") from None
    if ray.is_initialized():
        return ray, False
    package_root = str(Path(__file__).resolve().parents[2])
    if os.environ.get("RAY_ADDRESS"):  # a cluster: ship this neat_data to the workers
        import neat_data

        runtime_env: dict[str, Any] = {"py_modules": [str(Path(neat_data.__file__).parent)]}
    else:  # local workers import the same neat_data as this process (not another install), and, like the
        # single-process `python:` scorer, modules in the current directory
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.getcwd(), os.environ.get("PYTHONPATH")]))}}
    ray.init(runtime_env=runtime_env, log_to_driver=False, include_dashboard=False)
    return ray, True


class _EngineActor:
    """A Ray Data callable class: one engine per actor, batches of encoded requests in, encoded results out."""

    def __init__(self, engine_factory: Callable[[], Any], sampling: dict[str, Any]):
        self.engine = engine_factory()
        self.sampling = Sampling(**sampling)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        indices = [int(i) for i in batch["index"]]
        requests = [GenerationRequest(**json.loads(text)) for text in batch["request"]]
        results: dict[int, str] = {}
        try:
            for position, result in self.engine.generate(requests, self.sampling):
                results[position] = _encode_result(result)
        except Exception as error:  # the engine failed this batch as a whole: its unanswered rows become error rows
            failed = _encode_result(RequestResult(error=f"ray actor: {type(error).__name__}: {error}"))
            results.update({position: failed for position in range(len(requests)) if position not in results})
        return {"index": indices, "result": [results[position] for position in range(len(requests))]}


class RayBackend(Backend):
    name = "ray"

    def __init__(
        self,
        model: str,
        engine_factory: Callable[[], Any],
        *,
        actors: int = 1,
        gpus_per_actor: float | None = None,
        cpus_per_actor: float = 1.0,
        batch_size: int = 64,
        tensor_parallel_size: int = 1,
    ):
        """`engine_factory`: a picklable zero-argument callable that builds a Backend inside each actor."""
        self.model = model
        self.engine_factory = engine_factory
        self.actors, self.gpus_per_actor, self.cpus_per_actor = actors, gpus_per_actor, cpus_per_actor
        self.batch_size, self.tensor_parallel_size = batch_size, tensor_parallel_size
        self._started_ray = False

    @classmethod
    def from_options(cls, model: str, options: Any, *, seed: int = 0, **_: Any) -> RayBackend:
        """`options`: any model holding RayOptions' and VLLMOptions' fields (a generate config)."""
        from neat_data.core.models import resolve_model

        # Resolve the model on the driver: actors then load a path (or Hub id) and need no model-building extras.
        factory = functools.partial(_vllm_engine, resolve_model(model), model, narrow(options, VLLMOptions), seed)
        return cls(
            model,
            factory,
            actors=options.ray_actors,
            gpus_per_actor=options.ray_gpus_per_actor,
            cpus_per_actor=options.ray_cpus_per_actor,
            batch_size=options.ray_batch_size,
            tensor_parallel_size=options.tensor_parallel_size,
        )

    def _init_ray(self) -> Any:
        ray, started = init_ray()
        self._started_ray = self._started_ray or started
        return ray

    def generate(self, requests: Iterable[GenerationRequest], sampling: Sampling) -> Iterator[tuple[int, RequestResult]]:
        requests = list(requests)  # a Ray dataset is built from the whole list (the driver holds the plan anyway)
        if not requests:
            return
        ray = self._init_ray()
        gpus = self.gpus_per_actor
        if gpus is None:  # GPUs on the cluster: one per tensor-parallel rank; none: CPU engines
            gpus = float(self.tensor_parallel_size) if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        items = [{"index": i, "request": json.dumps(r.__dict__)} for i, r in enumerate(requests)]
        dataset = ray.data.from_items(items).map_batches(
            _EngineActor,
            fn_constructor_kwargs={"engine_factory": self.engine_factory, "sampling": sampling.model_dump()},
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_gpus=gpus,
            num_cpus=self.cpus_per_actor,
        )
        answered: set[int] = set()
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, text in zip(batch["index"], batch["result"]):
                    index = int(index)
                    if index not in answered:
                        answered.add(index)
                        yield index, _decode_result(str(text))
        except Exception as error:
            cause = root_cause(error)
            if "creation task" in str(error):  # no engine could start (model path, dtype, memory): the user's to fix
                raise NeatError(f"ray: an engine actor could not start: {cause}", field="backend") from None
            for index in range(len(requests)):  # the job died mid-way: every unanswered request is an error row
                if index not in answered:
                    yield index, RequestResult(error=f"ray: {type(error).__name__}: {cause}"[:2000])

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
