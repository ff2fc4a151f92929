"""Shared pieces of the transformers-based scorers: device/dtype choice and length-sorted batching."""

from __future__ import annotations

from typing import Any


def pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str) -> Any:
    """float32 on CPU (bf16 matmuls are ~6× slower on AVX2 CPUs), bf16 on CUDA."""
    import torch

    return torch.float32 if device == "cpu" else torch.bfloat16


def load_scoring_model(model: str, auto_class: str, device: str) -> tuple[Any, Any, str, int, int]:
    """(tokenizer, model in eval mode on its device, device, pad id, longest sequence) for a scorer.

    `auto_class` names the transformers Auto class (AutoModelForCausalLM, AutoModelForSequenceClassification).
    """
    import transformers

    from neat_data.models import resolve_model

    path = resolve_model(model)
    device = pick_device(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    loaded = getattr(transformers, auto_class).from_pretrained(path, dtype=compute_dtype(device)).to(device).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = getattr(loaded.config, "max_position_embeddings", None) or 4096
    return tokenizer, loaded, device, pad_id, longest


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def pad_batch(sequences: list[list[int]], pad_id: int, device: str) -> tuple[Any, Any]:
    """Right-padded input ids and attention mask, shape (batch, longest)."""
    import torch

    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids.to(device), mask.to(device)
