"""Generation backends behind one narrow protocol (`neat_data.engines.base.Backend`).

`make_backend(config)` is the one place an implementation is chosen; vLLM, openai and transformers are imported lazily
inside their modules' constructors, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neat_data.engines.base import Backend
    from neat_data.stages.generate import GenerateConfig


def make_backend(config: "GenerateConfig") -> "Backend":
    if config.backend == "vllm":
        from neat_data.engines.vllm_backend import VLLMBackend

        return VLLMBackend.from_config(config)
    if config.backend == "openai":
        from neat_data.engines.openai_backend import OpenAIBackend

        return OpenAIBackend.from_config(config)
    if config.backend == "transformers":
        from neat_data.engines.transformers_backend import TransformersBackend

        return TransformersBackend.from_config(config)
    if config.backend == "ray":
        from neat_data.engines.ray_backend import RayBackend

        return RayBackend.from_config(config)
    raise ValueError(f"unknown backend {config.backend!r}")
