"""Generation backends behind one narrow protocol (`neat_data.engines.base.Backend`).

`BackendName` lists them and `BACKENDS` holds each one's entry: its factory and the facts costs, provenance and
planning read (server or local, batch, price discount, engine package); `make_backend` is the one place an
implementation is chosen. Each backend owns a small
pydantic options model next to its implementation (`VLLMOptions`, `OpenAIOptions`, …); `BackendOptions` is their
union, flat, so a stage config that inherits it has every backend's options as its own fields (one CLI flag and one
recipe key per field). vLLM, openai, transformers and Ray are imported lazily inside the implementations, so importing
this package stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from neat_data.engines.base import Backend
from neat_data.engines.openai_backend import OpenAIBackend, OpenAIOptions
from neat_data.engines.openai_batch import OpenAIBatchBackend, OpenAIBatchOptions
from neat_data.engines.ray_backend import RayBackend, RayOptions
from neat_data.engines.transformers_backend import TransformersBackend, TransformersOptions
from neat_data.engines.vllm_backend import VLLMBackend, VLLMOptions
from neat_data.engines.vllm_batch import VLLMBatchBackend

if TYPE_CHECKING:
    from neat_data.engines.batch_journal import BatchJournal

BackendName = Literal["vllm", "openai", "transformers", "ray", "openai-batch", "vllm-batch"]
# vllm: one engine in this process; openai: any compatible server; transformers: model.generate, no engine start
# (small jobs); ray: vLLM engines in Ray Data actors; openai-batch: the OpenAI Batch API (half price, within 24 h;
# re-runs attach to submitted batches); vllm-batch: the same batch files through vLLM's run_batch, offline.


class BackendOptions(VLLMOptions, OpenAIOptions, TransformersOptions, RayOptions, OpenAIBatchOptions):
    """Every backend's options in one flat model (a generate config inherits it)."""


@dataclass(frozen=True)
class BackendEntry:
    """One backend: its factory and the facts the rest of the library reads about it."""

    factory: Callable[..., Backend]  # from_options(model, options, *, seed, state_dir, journal, progress): what it needs
    server: bool = False  # the model is a server's name: the server checks it (else loaded here: checked before a run)
    batch: bool = False  # needs a state folder for its batch files and may leave requests pending
    takes_all: str | None = None  # why it takes every request before the first answer (a token cap cannot stop it)
    discount: float = 0.0  # on list prices (the OpenAI Batch API: half)
    package: str | None = None  # the engine package computing the responses here (its version: provenance)


_WHOLE_BATCH = "a batch is submitted whole"
# One entry per name of BackendName (checked below at import: a name without one cannot be offered).
BACKENDS: dict[str, BackendEntry] = {
    "vllm": BackendEntry(VLLMBackend.from_options, package="vllm"),
    "openai": BackendEntry(OpenAIBackend.from_options, server=True),
    "transformers": BackendEntry(TransformersBackend.from_options, package="transformers"),
    "ray": BackendEntry(RayBackend.from_options, takes_all="its dataset is built from every request", package="vllm"),
    "openai-batch": BackendEntry(OpenAIBatchBackend.from_options, server=True, batch=True, takes_all=_WHOLE_BATCH, discount=0.5),
    "vllm-batch": BackendEntry(VLLMBatchBackend.from_options, batch=True, takes_all=_WHOLE_BATCH, package="vllm"),
}
assert set(BACKENDS) == set(get_args(BackendName)), "backend names drifted"


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
    Batch backends (`BACKENDS[name].batch`) need `state_dir` (batch files, downloaded outputs: e.g. <run>/batches/generate)
    and take a `journal` of their batches (default: <state_dir>/journal.json); `progress`: their polling bar."""
    if BACKENDS[name].batch and state_dir is None:
        raise ValueError(f"backend {name!r} needs a state folder (state_dir) for its batch files")
    return BACKENDS[name].factory(model, options, seed=seed, state_dir=state_dir, journal=journal, progress=progress)
