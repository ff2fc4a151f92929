"""Generation backends behind one narrow protocol (`neat_data.engines.base.Backend`).

`BackendName` lists them; `make_backend` is the one place an implementation is chosen. Each backend owns a small
pydantic options model next to its implementation (`VLLMOptions`, `OpenAIOptions`, …); `BackendOptions` is their
union, flat, so a stage config that inherits it has every backend's options as its own fields (one CLI flag and one
recipe key per field). vLLM, openai, transformers and Ray are imported lazily inside the implementations, so importing
this package stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from neat_data.engines.base import Backend
from neat_data.engines.openai_backend import OpenAIOptions
from neat_data.engines.openai_batch import OpenAIBatchOptions
from neat_data.engines.ray_backend import RayOptions
from neat_data.engines.transformers_backend import TransformersOptions
from neat_data.engines.vllm_backend import VLLMOptions

if TYPE_CHECKING:
    from neat_data.engines.batch_journal import BatchJournal

BackendName = Literal["vllm", "openai", "transformers", "ray", "openai-batch", "vllm-batch"]
# vllm: one engine in this process; openai: any compatible server; transformers: model.generate, no engine start
# (small jobs); ray: vLLM engines in Ray Data actors; openai-batch: the OpenAI Batch API (half price, within 24 h;
# re-runs attach to submitted batches); vllm-batch: the same batch files through vLLM's run_batch, offline.
BATCH_BACKENDS = ("openai-batch", "vllm-batch")  # the ones that need a state folder and may leave requests pending


SERVER_BACKENDS = ("openai", "openai-batch")  # the model is a server's name: the server checks it, not us


def loads_model_locally(name: BackendName) -> bool:
    """Whether the backend (or its actors) loads the model from a local folder or the Hub: then the model is checked
    before anything runs."""
    return name not in SERVER_BACKENDS


class BackendOptions(VLLMOptions, OpenAIOptions, TransformersOptions, RayOptions, OpenAIBatchOptions):
    """Every backend's options in one flat model (a generate config inherits it)."""


def _vllm(
    model: str, options: BackendOptions, *, seed: int, state_dir: Path | None, journal: BatchJournal | None, progress: bool
) -> Backend:
    from neat_data.engines.vllm_backend import VLLMBackend

    return VLLMBackend.from_options(model, options, seed=seed)


def _openai(
    model: str, options: BackendOptions, *, seed: int, state_dir: Path | None, journal: BatchJournal | None, progress: bool
) -> Backend:
    from neat_data.engines.openai_backend import OpenAIBackend

    return OpenAIBackend.from_options(model, options)


def _transformers(
    model: str, options: BackendOptions, *, seed: int, state_dir: Path | None, journal: BatchJournal | None, progress: bool
) -> Backend:
    from neat_data.engines.transformers_backend import TransformersBackend

    return TransformersBackend.from_options(model, options)


def _ray(
    model: str, options: BackendOptions, *, seed: int, state_dir: Path | None, journal: BatchJournal | None, progress: bool
) -> Backend:
    from neat_data.engines.ray_backend import RayBackend

    return RayBackend.from_options(model, options, options, seed=seed)


def _openai_batch(
    model: str, options: BackendOptions, *, seed: int, state_dir: Path | None, journal: BatchJournal | None, progress: bool
) -> Backend:
    from neat_data.engines.openai_batch import OpenAIBatchBackend

    assert state_dir is not None
    return OpenAIBatchBackend.from_options(model, options, state_dir=state_dir, journal=journal, progress=progress)


def _vllm_batch(
    model: str, options: BackendOptions, *, seed: int, state_dir: Path | None, journal: BatchJournal | None, progress: bool
) -> Backend:
    from neat_data.engines.vllm_batch import VLLMBatchBackend

    assert state_dir is not None
    return VLLMBatchBackend.from_options(model, options, seed=seed, state_dir=state_dir, journal=journal, progress=progress)


# One factory per name of BackendName (checked below at import: a name without one cannot be offered).
FACTORIES: dict[str, Callable[..., Backend]] = {
    "vllm": _vllm,
    "openai": _openai,
    "transformers": _transformers,
    "ray": _ray,
    "openai-batch": _openai_batch,
    "vllm-batch": _vllm_batch,
}
assert set(FACTORIES) == set(get_args(BackendName)), "backend names drifted"


def make_backend(
    name: BackendName,
    model: str,
    options: BackendOptions,
    *,
    seed: int = 0,
    state_dir: Path | None = None,
    journal: BatchJournal | None = None,
    progress: bool = True,
) -> Backend:
    """The backend `name` for `model` (the user's spec: alias, folder, Hub id, or a server's model name).
    `seed`: the engine-wide seed (vLLM); each request carries its own seed as well.
    Batch backends (BATCH_BACKENDS) need `state_dir` (batch files, downloaded outputs: e.g. <run>/batches/generate)
    and take a `journal` of their batches (default: <state_dir>/journal.json); `progress`: their polling bar."""
    if name in BATCH_BACKENDS and state_dir is None:
        raise ValueError(f"backend {name!r} needs a state folder (state_dir) for its batch files")
    return FACTORIES[name](model, options, seed=seed, state_dir=state_dir, journal=journal, progress=progress)
