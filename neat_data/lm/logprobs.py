"""Log-probs of response tokens: the one implementation behind self-contrast, the trainer and perplexity.

    sum_n = Σ_{t ∈ response(n)} log π(y_t | x, y_<t),   count_n = |response(n)|

`ResponseLogprobs` runs the decoder on whole sequences but the output head only on response positions
(prompt and padding positions cost no head compute), through `HeadLogprobs`: chunked, keeping only the
compute-dtype logits for backward — no float32 copy of full-vocabulary logits, no second run of the head
(49k–150k vocabularies make the head the largest activation and ~25% of the FLOPs of a small model). With
gradients off (scoring, reference passes, perplexity) only one chunk of logits exists at a time, so memory
does not grow with batch × length × vocabulary. It is one nn.Module so DDP/FSDP see a single forward.

Positions: the token at index t+1 is predicted at t, so a response occupying ids[s:e] is scored at
positions [s-1, e-1) — `response_batch` builds that mask from each candidate's prompt length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from neat_data.lm.batching import length_sorted_batches, pad_batch


def _head_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def _forward_part(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-normaliser, log-prob of the target) of one chunk of logits, in float32."""
    wide = logits.float()
    normaliser = torch.logsumexp(wide, dim=-1)
    return normaliser, wide.gather(1, targets.unsqueeze(1)).squeeze(1) - normaliser


def _backward_part(logits: torch.Tensor, normaliser: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """∂/∂logits of Σ_t g_t·log π(target_t) for one chunk: g_t·(onehot − softmax), in the logits' dtype."""
    scale = grad.float().unsqueeze(1)
    grad_logits = torch.exp(logits.float() - normaliser.unsqueeze(1)) * -scale
    grad_logits = grad_logits.scatter_add(1, targets.unsqueeze(1), scale)
    return grad_logits.to(logits.dtype)


_COMPILED: dict[str, tuple[Any, Any]] = {}


def _elementwise(device_type: str) -> tuple[Any, Any]:
    """The two element-wise passes over a logits chunk; on CUDA compiled into fused kernels (eager, each
    float32 temporary is a round trip through memory: ~25 ms of a 0.5B step with a 150k vocabulary)."""
    if device_type != "cuda":
        return _forward_part, _backward_part
    if device_type not in _COMPILED:
        _COMPILED[device_type] = (torch.compile(_forward_part, dynamic=True), torch.compile(_backward_part, dynamic=True))
    return _COMPILED[device_type]


def streamed_head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log π(target_t) for M rows without gradients: one [chunk, V] logits buffer, reused chunk after chunk.

    hidden [M, H], weight [V, H] (same dtype), targets [M] → [M] float32."""
    rows = hidden.shape[0]
    out = torch.empty(rows, dtype=torch.float32, device=hidden.device)
    if rows == 0:
        return out
    buffer = hidden.new_empty(min(rows, chunk), weight.shape[0])
    forward_part, _ = _elementwise(hidden.device.type)
    for start in range(0, rows, chunk):
        part = slice(start, start + chunk)
        block = buffer[: hidden[part].shape[0]]
        torch.matmul(hidden[part], weight.t(), out=block)
        _, out[part] = forward_part(block, targets[part])
    return out


class HeadLogprobs(torch.autograd.Function):
    """log π(target_t) = (h_t·W)[target_t] − logsumexp_v (h_t·W)_v for M rows, in chunks of `chunk` rows.

    hidden [M, H], weight [V, H] (both in the compute dtype), targets [M] → [M] float32. Forward keeps the
    logits in the compute dtype (bf16 on GPU: half of the float32 copies autograd would keep) and the
    log-normaliser; backward rebuilds the softmax from them chunk by chunk, so the output head is not run
    again (recomputing it costs ~9% of a step for a 150k vocabulary, measured on an H100):
        ∂/∂logits = g_t · (onehot(target_t) − softmax_t),  ∂h = ∂logits·W,  ∂W = ∂logitsᵀ·h.
    Only for use with gradients on (`head_logprobs` takes `streamed_head_logprobs` otherwise: inside an
    autograd Function, `needs_input_grad` is true for a Parameter even under torch.no_grad()).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        rows = hidden.shape[0]
        logits = hidden.new_empty(rows, weight.shape[0])
        normaliser = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        out = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        forward_part, _ = _elementwise(hidden.device.type)
        for start in range(0, rows, chunk):
            part = slice(start, start + chunk)
            torch.matmul(hidden[part], weight.t(), out=logits[part])
            normaliser[part], out[part] = forward_part(logits[part], targets[part])
        ctx.save_for_backward(hidden, weight, targets, logits, normaliser)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        hidden, weight, targets, logits, normaliser = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        _, backward_part = _elementwise(hidden.device.type)
        for start in range(0, hidden.shape[0], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            grad_logits = backward_part(logits[part], normaliser[part], targets[part], grad_out[part])
            if grad_hidden is not None:
                torch.matmul(grad_logits, weight, out=grad_hidden[part])
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ hidden[part]).float()
        return grad_hidden, (grad_weight.to(weight.dtype) if grad_weight is not None else None), None, None


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Output-head log-probs under the ambient autocast: hidden and weight are cast to its dtype (the cast's
    backward returns float32 gradients to float32 master weights). `HeadLogprobs` when a gradient is wanted,
    the streamed one-chunk pass when not."""
    weight = head.weight
    if getattr(head, "bias", None) is not None:
        raise ValueError("output heads with a bias are not supported")
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    else:
        hidden = hidden.to(weight.dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return HeadLogprobs.apply(hidden, weight, targets, chunk)
        return streamed_head_logprobs(hidden, weight, targets, chunk)


class ResponseLogprobs(torch.nn.Module):
    """forward(input_ids [N, T], attention_mask [N, T], response_mask [N, T-1] bool)
    → (sums [N], counts [N]): Σ log π(y_t | x, y_<t) over each sequence's response tokens, and how many."""

    def __init__(self, model: torch.nn.Module, *, head_chunk: int = 1024, compile_decoder: bool = False):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
        self.decoder = torch.compile(base.get_decoder()) if compile_decoder else base.get_decoder()
        self.head = base.get_output_embeddings()
        self.softcap = getattr(base.config, "final_logit_softcapping", None)
        self.head_chunk = head_chunk

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Response positions as flat row indices, found before the decoder runs (the one host sync of the
        # step happens while the GPU is idle anyway); index_select's backward is a cheap index_add.
        where = response_mask.nonzero()
        owners, width = where[:, 0], input_ids.shape[1]
        rows = owners * width + where[:, 1]  # position t of sequence n in the [N·T] flattening
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # [M, H], M response tokens of the batch
        targets = input_ids.reshape(-1).index_select(0, rows + 1)
        if self.softcap or getattr(self.head, "bias", None) is not None:  # Gemma-2 style heads: plain autograd, checkpointed chunks
            pieces = []
            for start in range(0, picked.shape[0], self.head_chunk):
                chunk = (picked[start : start + self.head_chunk], targets[start : start + self.head_chunk], self.head, self.softcap)
                pieces.append(
                    checkpoint(_head_logprobs, *chunk, use_reentrant=False) if torch.is_grad_enabled() else _head_logprobs(*chunk)
                )
            token_logprobs = torch.cat(pieces) if pieces else picked.new_zeros(0, dtype=torch.float32)
        else:
            token_logprobs = head_logprobs(picked, self.head, targets, self.head_chunk)
        sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(0, owners, token_logprobs)
        return sums, response_mask.sum(dim=1)


def response_batch(
    sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int], pad_id: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids [N, T], attention_mask [N, T], response_mask [N, T-1] bool): position t is in
    the response mask when it predicts a response token t+1 (t ≥ prompt_length − 1, not padding)."""
    input_ids, attention_mask = pad_batch(sequences, pad_id, device)
    positions = torch.arange(input_ids.shape[1] - 1, device=input_ids.device).unsqueeze(0)
    start = torch.tensor(list(prompt_lengths), device=input_ids.device).unsqueeze(1) - 1
    response_mask = (positions >= start) & attention_mask[:, 1:].bool()
    return input_ids, attention_mask, response_mask


def candidate_logprobs(
    forward: ResponseLogprobs,
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    pad_id: int,
    *,
    batch_size: int,
    device: Any,
    autocast_dtype: torch.dtype | None = None,
) -> list[tuple[float, int]]:
    """(Σ log π over the response tokens, number of response tokens) of each sequence, without gradients,
    in length-sorted batches of `batch_size` (batching and padding do not change the values)."""
    device = torch.device(device)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        ids, mask, response = response_batch([sequences[i] for i in batch], [prompt_lengths[i] for i in batch], pad_id, str(device))
        autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with torch.no_grad(), autocast:  # local: a process-wide switch would leak into a trainer in the same process
            sums, counts = forward(ids, mask, response)
        for row, index in enumerate(batch):
            results[index] = (float(sums[row]), int(counts[row]))
    return results
