"""Device and compute-dtype choice, and loading models: frozen scoring models, trainable policies.

`load_scoring_model` gives a model in eval mode with gradients off (scorers, reference passes);
`load_policy` gives float32 master weights to train (autocast picks the compute dtype).
"""

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


def pad_id_of(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load_scoring_model(model: str, auto_class: str, device: str) -> tuple[Any, Any, str, int, int]:
    """(tokenizer, model in eval mode without gradients on its device, device, pad id, longest sequence).

    `auto_class` names the transformers Auto class (AutoModelForCausalLM, AutoModelForSequenceClassification).
    """
    import transformers

    from neat_data.core.models import resolve_model

    path = resolve_model(model)
    device = pick_device(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    loaded = getattr(transformers, auto_class).from_pretrained(path, dtype=compute_dtype(device)).to(device).eval()
    loaded.requires_grad_(False)
    longest = getattr(loaded.config, "max_position_embeddings", None) or 4096
    return tokenizer, loaded, device, pad_id_of(tokenizer), longest


def load_policy(path: str, device: str) -> tuple[Any, Any, Any]:
    """(tokenizer, causal LM with float32 master weights on `device`, the checkpoint's own dtype)."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    config = transformers.AutoConfig.from_pretrained(path)
    own_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    model.config.use_cache = False
    return tokenizer, model, own_dtype
