"""transformers backend: `model.generate` in left-padded batches, no engine to start.

For small jobs (a few dozen held-out prompts per round) it finishes before a vLLM engine would have
started (~50 s on CPU); for large ones vLLM's continuous batching wins by far. Determinism: each batch is
seeded from its first request's seed, so the same requests in the same order give the same samples
(vLLM seeds each request on its own). Like every backend, one failing batch is retried request by
request so that a bad request becomes an error result, never a dead job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.messages import require_chat_template, template_accepts_system
from neat_data.core.models import resolve_model
from neat_data.engines.base import Backend, Completion, GenerationRequest, RequestResult, Sampling


class TransformersOptions(BaseModel):
    """Options of the transformers backend (model.generate in this process, no engine start)."""

    model_config = ConfigDict(extra="forbid")

    transformers_batch_size: int = Field(16, ge=1, description="transformers: sequences per generate call.")
    transformers_device: str = Field("auto", description="transformers: auto | cpu | cuda | cuda:N.")


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model: str, *, model_label: str | None = None, device: str = "auto", batch_size: int = 16):
        import transformers

        from neat_data.lm.loading import compute_dtype, pick_device

        self.model = model_label or model
        self.device = pick_device(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model, padding_side="left")
        require_chat_template(self.tokenizer, self.model)
        self.network = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=compute_dtype(self.device)).to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.stop_ids = {self.tokenizer.eos_token_id} | set(_as_list(getattr(self.network.generation_config, "eos_token_id", None)))
        self.max_model_len = getattr(self.network.config, "max_position_embeddings", None) or 4096
        self.batch_size = batch_size
        self.system_role_ok = template_accepts_system(self.tokenizer)

    @classmethod
    def from_options(cls, model: str, options: TransformersOptions, **_: Any) -> TransformersBackend:
        return cls(resolve_model(model), model_label=model, device=options.transformers_device, batch_size=options.transformers_batch_size)

    def generate(self, requests: Iterable[GenerationRequest], sampling: Sampling) -> Iterator[tuple[int, RequestResult]]:
        batch: list[tuple[int, GenerationRequest, list[int], str]] = []
        for index, request in enumerate(requests):  # consumed lazily: the stage streams requests in
            messages, mode = request.messages, "system" if request.merged_messages is not None else "none"
            if request.merged_messages is not None and not self.system_role_ok:
                messages, mode = request.merged_messages, "merged"
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            if len(ids) + 1 > self.max_model_len:
                yield (
                    index,
                    RequestResult(error=f"prompt too long: {len(ids)} tokens, model context is {self.max_model_len}", system_mode=mode),
                )
                continue
            batch.append((index, request, ids, mode))
            if sum(item[1].n for item in batch) >= self.batch_size:
                yield from self._run_batch(batch, sampling)
                batch = []
        if batch:
            yield from self._run_batch(batch, sampling)

    def _run_batch(
        self, batch: list[tuple[int, GenerationRequest, list[int], str]], sampling: Sampling
    ) -> Iterator[tuple[int, RequestResult]]:
        try:
            samples = self._sample([ids for _, _, ids, _ in batch], [request.n for _, request, _, _ in batch], batch[0][1].seed, sampling)
        except Exception as error:
            if len(batch) == 1:
                yield batch[0][0], RequestResult(error=f"transformers: {type(error).__name__}: {error}", system_mode=batch[0][3])
                return
            for item in batch:
                yield from self._run_batch([item], sampling)
            return
        for (index, _, ids, mode), completions in zip(batch, samples):
            yield (
                index,
                RequestResult(
                    completions=[Completion(text, reason, len(ids), count) for text, reason, count in completions], system_mode=mode
                ),
            )

    def _sample(self, prompts: list[list[int]], counts: list[int], seed: int, sampling: Sampling) -> list[list[tuple[str, str, int]]]:
        import torch

        rows = [ids for ids, n in zip(prompts, counts) for _ in range(n)]
        width = max(len(ids) for ids in rows)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in rows], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=self.device)
        torch.manual_seed(seed)
        greedy = sampling.temperature == 0
        with torch.no_grad():
            output = self.network.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=not greedy,
                max_new_tokens=min(sampling.max_tokens, self.max_model_len - width),
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.stop_ids),
                **({} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}),
            )
        results, row = [], 0
        for n in counts:
            completions = []
            for new in output[row : row + n, width:].tolist():
                stop = next((i for i, token in enumerate(new) if token in self.stop_ids), None)
                kept = new if stop is None else new[:stop]
                completions.append(
                    (
                        self.tokenizer.decode(kept, skip_special_tokens=True),
                        "length" if stop is None else "stop",
                        len(kept) + (0 if stop is None else 1),
                    )
                )
            results.append(completions)
            row += n
        return results

    def close(self) -> None:
        self.network = None


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
