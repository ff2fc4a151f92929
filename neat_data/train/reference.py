"""Reference log-probs for DPO: Σ log π_ref(y | x) of every training candidate under the starting policy.

The reference is the policy as loaded, before any step (in `neat-data run`, the round's starting policy:
the previous round's model). One no-grad pass (eval mode, the training autocast) over every candidate the
loss reads, before the model is wrapped for DDP/FSDP — every rank computes a share and the shares are
summed across ranks — then cached, so a killed and restarted training does not pay for it again.

Cache: `<folder of the ranked Parquet>/reference_logprobs/<key>.parquet` (for a run folder:
`<run>/export/ranked/reference_logprobs/`), one row per candidate (prompt_id, candidate, reference_logprob,
tokens). It lives with the data, not the output, because it is a function of the data, the rendering and
the starting weights — a second output trained from the same data and model reuses it. The key is the
sha256 of the exact token ids and prompt lengths of every candidate (so another data file, tokenizer, chat
template, end-of-turn rule, max_length or candidate choice gives another key), the starting weights'
checksum (Σw, Σw² in float64: another model, or another round's model, gives another key) and the compute
dtype. A cache file that does not match the candidates it should describe is ignored and rewritten; a
data folder that cannot be written means no cache, not a failed training.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from neat_data.train.data import RankedExample

CACHE_VERSION = "neat-reference-v1"
CACHE_SCHEMA = pa.schema(
    [("prompt_id", pa.string()), ("candidate", pa.int32()), ("reference_logprob", pa.float64()), ("tokens", pa.int32())]
)


def weights_checksum(model: Any) -> tuple[float, float]:
    """(Σ w, Σ w²) over the parameters, in float64, 16M values at a time (no float64 copy of a whole
    embedding matrix)."""
    import torch

    total, squares = 0.0, 0.0
    with torch.no_grad():
        for parameter in model.parameters():
            for piece in parameter.detach().reshape(-1).split(1 << 24):
                wide = piece.double()
                total += float(wide.sum())
                squares += float(wide.pow(2).sum())
    return total, squares


def cache_key(examples: list[RankedExample], checksum: tuple[float, float], compute: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_VERSION, "weights": [repr(v) for v in checksum], "compute": compute}).encode())
    for example in examples:
        digest.update(example.prompt_id.encode("utf-8", "surrogatepass") + b"\0")
        for sequence, length in zip(example.sequences, example.prompt_lengths):
            digest.update(struct.pack(f"<i{len(sequence)}q", length, *sequence))
    return digest.hexdigest()[:32]


def cache_path(data_path: Path, key: str) -> Path:
    return Path(data_path).parent / "reference_logprobs" / f"{key}.parquet"


def _read_cache(path: Path, examples: list[RankedExample]) -> list[float] | None:
    """The cached values in candidate order, or None when absent or not describing these candidates."""
    try:
        table = pq.read_table(path)
    except Exception:  # absent, truncated or foreign: recompute  # noqa: BLE001
        return None
    expected = [(e.prompt_id, c) for e in examples for c in range(len(e.sequences))]
    if table.schema != CACHE_SCHEMA or table.num_rows != len(expected):
        return None
    if list(zip(table.column("prompt_id").to_pylist(), table.column("candidate").to_pylist())) != expected:
        return None
    return table.column("reference_logprob").to_pylist()


def attach_reference(examples: list[RankedExample], values: list[float]) -> list[RankedExample]:
    out, position = [], 0
    for example in examples:
        count = len(example.sequences)
        out.append(replace(example, reference=tuple(values[position : position + count])))
        position += count
    return out


def reference_pass(
    examples: list[RankedExample],
    model: Any,
    pad_id: int,
    *,
    data_path: Path,
    device: Any,
    bf16: bool,
    batch_size: int,
    head_chunk: int,
    rank: int = 0,
    world: int = 1,
    total: Any = None,
) -> tuple[list[RankedExample], dict[str, Any]]:
    """Examples with `reference` filled, and what happened ({cache, reused, candidates}).

    `total(values) → values summed over ranks` (a collective; identity when `world` is 1)."""
    import torch

    from neat_data.core.runfolder import atomic_write_table
    from neat_data.lm.logprobs import ResponseLogprobs, candidate_logprobs

    total = total or (lambda values: values)
    key = cache_key(examples, weights_checksum(model), "bf16" if bf16 else str(next(model.parameters()).dtype))
    path = cache_path(data_path, key)
    cached = _read_cache(path, examples)
    everyone_has_it = total([1.0 if cached is not None else 0.0])[0] == world  # all ranks take the same branch
    if cached is not None and everyone_has_it:
        return attach_reference(examples, cached), {"cache": str(path), "reused": True, "candidates": len(cached)}
    flat = [(e, c) for e in examples for c in range(len(e.sequences))]
    mine = list(range(rank, len(flat), world))
    was_training = model.training
    model.eval()
    forward = ResponseLogprobs(model, head_chunk=head_chunk)
    values = candidate_logprobs(
        forward,
        [flat[i][0].sequences[flat[i][1]] for i in mine],
        [flat[i][0].prompt_lengths[flat[i][1]] for i in mine],
        pad_id,
        batch_size=batch_size,
        device=device,
        autocast_dtype=torch.bfloat16 if bf16 else None,
    )
    model.train(was_training)
    share = [0.0] * len(flat)
    for index, (value, _) in zip(mine, values):
        share[index] = value
    summed = total(share)
    if rank == 0:
        table = pa.Table.from_pydict(
            {
                "prompt_id": [e.prompt_id for e, _ in flat],
                "candidate": [c for _, c in flat],
                "reference_logprob": summed,
                "tokens": [len(e.sequences[c]) - e.prompt_lengths[c] for e, c in flat],
            },
            schema=CACHE_SCHEMA,
        )
        try:
            atomic_write_table(path, table)
        except OSError as error:  # a read-only data folder: train without the cache
            print(f"reference log-probs not cached ({error})", file=sys.stderr)
    return attach_reference(examples, summed), {"cache": str(path), "reused": False, "candidates": len(flat)}
