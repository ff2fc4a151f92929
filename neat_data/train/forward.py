"""The policy's log-probs of response tokens, and the policy's life cycle: load, choose what trains, save.

`ResponseLogprobs` runs the decoder on whole sequences but the output head only on response positions,
in chunks under activation checkpointing, so a [tokens × vocabulary] logits tensor never exists whole
(49k–150k vocabularies make it the largest activation of a small model) and prompt/padding positions
cost no head compute. It is one nn.Module so DDP sees a single forward.
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
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        picked = hidden[:, :-1][response_mask]  # [M, H], M response tokens of the whole batch
        targets = input_ids[:, 1:][response_mask]
        pieces = []
        for start in range(0, picked.shape[0], self.head_chunk):
            chunk = (picked[start:start + self.head_chunk], targets[start:start + self.head_chunk], self.head, self.softcap)
            pieces.append(checkpoint(_head_logprobs, *chunk, use_reentrant=False) if torch.is_grad_enabled() else _head_logprobs(*chunk))
        token_logprobs = torch.cat(pieces) if pieces else picked.new_zeros(0, dtype=torch.float32)
        owners = response_mask.nonzero()[:, 0]
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


def save_policy(model: Any, tokenizer: Any, out: Path, dtype: Any, extra_files: dict[str, str]) -> None:
    """Write an HF folder (weights, config, tokenizer, chat template, `extra_files`) at `out`, atomically:
    completed in `<out>.partial/` (which already holds the step log), then swapped in; LoRA adapters are
    merged first so vLLM loads a plain model."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    partial = partial_folder(out)
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
