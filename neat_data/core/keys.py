"""Stable identities: prompt ids, per-request seeds and row content keys.

All are hashes of canonical JSON, so they are the same on every machine, Python version and run:
- `prompt_id(messages)`: which neutral conversation a row answers;
- `request_seed(seed, prompt_id, steering, pair_id)`: the sampling seed of one request (n samples);
- `content_key(...)`: what makes a response row unique; resume skips keys already written;
- `dataset_key(...)`: the same for a response that came with the prompts (steering "dataset"): its text, not a model.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _digest(payload: Any) -> bytes:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def prompt_id(messages: list[dict[str, str]]) -> str:
    """16 hex digits of sha256 over the neutral conversation (roles and contents only)."""
    return _digest([[m["role"], m["content"]] for m in messages]).hex()[:16]


def text_hash(text: str) -> str:
    """16 hex digits of sha256 of a text (system prompts, pair contents)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def request_seed(seed: int, prompt_id: str, steering: str, pair_id: str | None) -> int:
    """Seed of one request, derived from the run seed; fits in 31 bits (vLLM and OpenAI accept it)."""
    return int.from_bytes(_digest([seed, prompt_id, steering, pair_id])[:8], "big") % (2**31 - 1)


def content_key(
    *,
    round_index: int,
    prompt_id: str,
    steering: str,
    pair_id: str | None,
    system_prompt_hash: str | None,
    sample_index: int,
    model: str,
    sampling: dict[str, Any],
) -> str:
    """32 hex digits identifying one response row: same inputs, same key, on any machine.

    The system prompt's hash is part of the key, so editing a pair's text in its library makes its rows
    missing (regenerated) instead of silently reusing responses to the old text.
    """
    return _digest(
        {
            "round": round_index,
            "prompt_id": prompt_id,
            "steering": steering,
            "pair": pair_id,
            "system_prompt": system_prompt_hash,
            "sample": sample_index,
            "model": model,
            "sampling": sampling,
        }
    ).hex()[:32]


def dataset_key(*, round_index: int, prompt_id: str, label: str, sample_index: int, response: str) -> str:
    """32 hex digits identifying one dataset response row (a prompt's answer from the user's own file)."""
    return _digest(
        {
            "round": round_index,
            "prompt_id": prompt_id,
            "steering": "dataset",
            "label": label,
            "sample": sample_index,
            "response": response,
        }
    ).hex()[:32]


def choose_index(seed: int, prompt_id: str, count: int) -> int:
    """Deterministic choice of one of `count` items for a prompt (pair choice per prompt)."""
    return int.from_bytes(_digest(["choose", seed, prompt_id])[:8], "big") % count
