"""The policy's log-probs of response tokens, and the policy's life cycle: load, choose what trains, save.

`ResponseLogprobs` runs the decoder on whole sequences but the output head only on response positions
(prompt and padding positions cost no head compute), through `HeadLogprobs`: chunked, keeping only the
compute-dtype logits for backward — no float32 logits copies, no second run of the head (49k–150k
vocabularies make the head the largest activation and ~25% of the FLOPs of a small model). It is one
nn.Module so DDP sees a single forward.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


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


class HeadLogprobs(torch.autograd.Function):
    """log π(target_t) = (h_t·W)[target_t] − logsumexp_v (h_t·W)_v for M rows, in chunks of `chunk` rows.

    hidden [M, H], weight [V, H] (both in the compute dtype), targets [M] → [M] float32. Forward keeps the
    logits in the compute dtype (bf16 on GPU: half of the float32 copies autograd would keep) and the
    log-normaliser; backward rebuilds the softmax from them chunk by chunk, so the output head is not run
    again (recomputing it costs ~9% of a step for a 150k vocabulary, measured on an H100):
        ∂/∂logits = g_t · (onehot(target_t) − softmax_t),  ∂h = ∂logits·W,  ∂W = ∂logitsᵀ·h.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        rows = hidden.shape[0]
        keep = any(ctx.needs_input_grad[:2])  # no gradient wanted (evaluation): one chunk of logits at a time
        logits = hidden.new_empty(rows if keep else min(rows, chunk), weight.shape[0])
        normaliser = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        out = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        forward_part, _ = _elementwise(hidden.device.type)
        for start in range(0, rows, chunk):
            part = slice(start, start + chunk)
            block = logits[part] if keep else logits[: hidden[part].shape[0]]
            torch.matmul(hidden[part], weight.t(), out=block)
            normaliser[part], out[part] = forward_part(block, targets[part])
        if keep:
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
    """`HeadLogprobs` under the ambient autocast: hidden and weight are cast to its dtype (the cast's
    backward returns float32 gradients to float32 master weights)."""
    weight = head.weight
    if getattr(head, "bias", None) is not None:
        raise ValueError("output heads with a bias are not supported")
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    else:
        hidden = hidden.to(weight.dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return HeadLogprobs.apply(hidden, weight, targets, chunk)


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
                chunk = (picked[start:start + self.head_chunk], targets[start:start + self.head_chunk], self.head, self.softcap)
                pieces.append(checkpoint(_head_logprobs, *chunk, use_reentrant=False) if torch.is_grad_enabled() else _head_logprobs(*chunk))
            token_logprobs = torch.cat(pieces) if pieces else picked.new_zeros(0, dtype=torch.float32)
        else:
            token_logprobs = head_logprobs(picked, self.head, targets, self.head_chunk)
        sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(0, owners, token_logprobs)
        return sums, response_mask.sum(dim=1)


def load_policy(path: str, device: str) -> tuple[Any, Any, Any]:
    """(tokenizer, model with float32 master weights on `device`, the checkpoint's own dtype)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    config = transformers.AutoConfig.from_pretrained(path)
    own_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    model.config.use_cache = False
    return tokenizer, model, own_dtype


def choose_trainable(model: Any, *, lora_rank: int, lora_alpha: float, lora_dropout: float, top_layers: int | None) -> Any:
    """Full fine-tune (default), LoRA adapters on every linear layer, or only the top N decoder layers +
    final norm (embeddings and a tied head stay frozen). Returns the model to train (peft-wrapped for LoRA)."""
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
    if top_layers:
        layers = model.get_decoder().layers
        if top_layers > len(layers):
            raise ValueError(f"top_layers={top_layers} but the model has {len(layers)} layers")
        model.requires_grad_(False)
        for layer in layers[len(layers) - top_layers:]:
            layer.requires_grad_(True)
        norm = getattr(model.get_decoder(), "norm", None)
        if norm is not None:
            norm.requires_grad_(True)
    return model


def save_policy(model: Any, tokenizer: Any, out: Path, dtype: Any, extra_files: dict[str, str], state_dict: dict[str, Any] | None = None) -> None:
    """Write an HF folder (weights — `state_dict` when given — config, tokenizer, chat template, `extra_files`) at `out`, atomically:
    completed in `<out>.partial/` (which already holds the step log), then swapped in; LoRA adapters are
    merged first so vLLM loads a plain model."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    partial = partial_folder(out)
    if state_dict is not None:  # FSDP: the gathered full weights (the model itself holds shards)
        model.save_pretrained(partial, safe_serialization=True, state_dict={k: v.to(dtype) for k, v in state_dict.items()})
    else:
        model.to(dtype).save_pretrained(partial, safe_serialization=True)
        model.to(torch.float32)
    tokenizer.save_pretrained(partial)
    for name, text in extra_files.items():
        (partial / name).write_text(text, encoding="utf-8")
    for file in partial.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    replace_folder(partial, out)


def partial_folder(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target`: readers see the old folder, the new one, or (for an instant) none —
    never a mix of the two."""
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old)
    else:
        os.replace(new, target)
