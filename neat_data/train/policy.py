"""The policy's life cycle in training: choose what trains (full, LoRA, top-N layers), save atomically.

Loading (`neat_data.lm.loading.load_policy`) and the log-probs (`neat_data.lm.logprobs.ResponseLogprobs`)
live in the shared `neat_data.lm` layer, with the scorers and the perplexity pass.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch


def choose_trainable(model: Any, *, lora_rank: int, lora_alpha: float, lora_dropout: float, top_layers: int | None) -> Any:
    """Full fine-tune (default), LoRA adapters on every linear layer, or only the top N decoder layers +
    final norm (embeddings and a tied head stay frozen). Returns the model to train (peft-wrapped for LoRA)."""
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        return get_peft_model(
            model,
            LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    if top_layers:
        layers = model.get_decoder().layers
        if top_layers > len(layers):
            raise ValueError(f"top_layers={top_layers} but the model has {len(layers)} layers")
        model.requires_grad_(False)
        for layer in layers[len(layers) - top_layers :]:
            layer.requires_grad_(True)
        norm = getattr(model.get_decoder(), "norm", None)
        if norm is not None:
            norm.requires_grad_(True)
    return model


def save_policy(
    model: Any, tokenizer: Any, out: Path, dtype: Any, extra_files: dict[str, str], state_dict: dict[str, Any] | None = None
) -> None:
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
