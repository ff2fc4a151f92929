"""Generation backends behind one narrow protocol (`neat_data.engines.base.Backend`).

`BackendName` lists them; `make_backend` is the one place an implementation is chosen. Each backend owns a small
pydantic options model next to its implementation (`VLLMOptions`, `OpenAIOptions`, …); `BackendOptions` is their
union, flat, so a stage config that inherits it has every backend's options as its own fields (one CLI flag and one
recipe key per field). vLLM, openai, transformers and Ray are imported lazily inside the implementations, so importing
this package stays cheap.
"""

from __future__ import annotations

import typing
from typing import Literal

from neat_data.engines.base import Backend
from neat_data.engines.openai_backend import OpenAIOptions
from neat_data.engines.ray_backend import RayOptions
from neat_data.engines.transformers_backend import TransformersOptions
from neat_data.engines.vllm_backend import VLLMOptions

BackendName = Literal["vllm", "openai", "transformers", "ray"]
# vllm: one engine in this process; openai: any compatible server; transformers: model.generate, no engine start
# (small jobs); ray: vLLM engines in Ray Data actors.


def loads_model_locally(name: BackendName) -> bool:
    """Whether the backend (or its actors) loads the model from a local folder or the Hub: then the model is checked
    before anything runs. A server's model name is the server's business."""
    return name in typing.get_args(BackendName) and name != "openai"


class BackendOptions(VLLMOptions, OpenAIOptions, TransformersOptions, RayOptions):
    """Every backend's options in one flat model (a generate config inherits it)."""


def make_backend(name: BackendName, model: str, options: BackendOptions, *, seed: int = 0) -> Backend:
    """The backend `name` for `model` (the user's spec: alias, folder, Hub id, or a server's model name).
    `seed`: the engine-wide seed (vLLM); each request carries its own seed as well."""
    if name == "vllm":
        from neat_data.engines.vllm_backend import VLLMBackend

        return VLLMBackend.from_options(model, options, seed=seed)
    if name == "openai":
        from neat_data.engines.openai_backend import OpenAIBackend

        return OpenAIBackend.from_options(model, options)
    if name == "transformers":
        from neat_data.engines.transformers_backend import TransformersBackend

        return TransformersBackend.from_options(model, options)
    if name == "ray":
        from neat_data.engines.ray_backend import RayBackend

        return RayBackend.from_options(model, options, options, seed=seed)
    raise ValueError(f"unknown backend {name!r}")
