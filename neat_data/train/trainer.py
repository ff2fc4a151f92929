"""The NEAT trainer: one short explicit loop over the `ranked` export.

In:  a run folder's `export/ranked/train.parquet` (or any ranked Parquet) and a policy (alias, folder, Hub id).
Out: an HF folder at `out` (weights, tokenizer, chat template, `neat_train.json`) and `train_log.jsonl`
     (one line per optimizer step: loss parts, ranking accuracy, grad norm, lr, tokens/s), written next to it
     while training runs (`<out>.partial/`) and moved into place at the end.
Run: `neat-data train RUN --model M --loss rrhf --out RUN/model`; several processes with
     `torchrun --nproc-per-node N -m neat_data.cli train …` or `accelerate launch -m neat_data.cli train …` (DDP).

data → model (float32 master weights; bf16 autocast and optional gradient checkpointing on CUDA) →
[DPO: reference log-probs of the starting policy, one cached no-grad pass] → AdamW with linear warmup +
cosine decay → steps (gradient accumulation, clipping) → checkpoint.
Each candidate is rendered by `neat_data.lm.render` (the neutral prompt, no steering system prompt, through
the policy's own chat template + the response + the end-of-turn token only if the response finished);
prompt tokens are masked; per-sequence log-prob sums come from `neat_data.lm.logprobs.ResponseLogprobs`
(the module self-contrast scores with); the loss is `neat_data.train.loss.LOSSES[config.loss]`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from neat_data.train.loss import DpoPairs, LossName


class TrainConfig(BaseModel):
    """One training run; saved in `<out>/neat_train.json`."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="Run folder (uses export/ranked/train.parquet), an export folder, or a ranked Parquet file.")
    model: str = Field(description="Policy to train: bundled alias, local HF folder or Hub id.")
    out: Path = Field(description="Output HF folder.")
    loss: LossName = Field(
        "rrhf",
        description="rrhf (pairwise hinge) | pro (listwise) | dpo (sigmoid DPO on pairs, reference = the "
        "starting policy) | sft (LM loss on the best candidate only).",
    )
    rank_weight: float = Field(1.0, ge=0, description="Weight of the ranking loss (rrhf, pro, dpo).")
    sft_weight: float | None = Field(
        None, ge=0, description="Weight of the LM loss on the best candidate (default: 1 for rrhf and sft, 0.05·(C−1)² for pro, 0 for dpo)."
    )
    beta: float = Field(0.1, gt=0, description="DPO: β, the strength of the implicit KL penalty.")
    dpo_pairs: DpoPairs = Field(
        "best-vs-worst",
        description="DPO pairs from each ranked list: best-vs-worst (by score) or "
        "pos-vs-neg (every positive- × negative-prompt response, positive chosen).",
    )
    lr: float = Field(2e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Share of optimizer steps with linear warmup; cosine decay to 0 after.")
    epochs: int = Field(1, ge=1)
    prompts_per_batch: int = Field(4, ge=1, description="Prompts per micro-batch (each with all its candidates).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    max_length: int = Field(1024, ge=8, description="Longest sequence (prompt + response); responses are cut to fit.")
    max_candidates: int | None = Field(None, ge=2, description="Candidates per prompt (spread from best to worst); default all.")
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda (under torchrun/accelerate: this rank's GPU).")
    bf16: bool | None = Field(None, description="bf16 autocast (default: on for CUDA, off on CPU where it is ~6× slower).")
    gradient_checkpointing: bool | None = Field(None, description="Recompute activations in backward (default: on for CUDA).")
    compile: bool = Field(False, description="torch.compile the decoder (CUDA; off on CPU).")
    head_chunk: int = Field(1024, ge=1, description="Response tokens per output-head chunk (bounds logits memory).")
    lora_rank: int = Field(0, ge=0, description="LoRA rank (0: off). Adapters are merged into the weights on save.")
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    top_layers: int | None = Field(None, ge=1, description="Train only the top N decoder layers (+ final norm).")
    fsdp: bool | None = Field(
        None,
        description="Shard weights, gradients and optimizer state over the ranks (FSDP2) instead of DDP "
        "(default: on when accelerate launch runs an FSDP config).",
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU (small updates survive), the base model's dtype on CUDA."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.lora_rank and self.top_layers:
            raise ValueError("choose lora_rank or top_layers, not both")
        if self.fsdp and self.lora_rank:
            raise ValueError("LoRA keeps optimizer state small already: train it with DDP, not fsdp")
        if self.loss == "sft" and self.sft_weight == 0:
            raise ValueError("loss sft with sft_weight 0 trains nothing")
        if self.loss != "sft" and self.rank_weight == 0 and self.sft_weight == 0:  # every other loss has a ranking/pair term
            raise ValueError("rank_weight and sft_weight are both 0: nothing to train")
        return self


@dataclass
class TrainSummary:
    out: Path
    steps: int
    prompts: int
    candidates: int
    tokens: int
    seconds: float
    tokens_per_second: float
    first: dict[str, float]
    last: dict[str, float]

    def line(self) -> str:
        return (
            f"train: {self.steps} steps, {self.tokens} tokens, {self.tokens_per_second:.0f} tok/s, "
            f"loss {self.first.get('loss', float('nan')):.4f} → {self.last.get('loss', float('nan')):.4f}"
        )


class DistributedContext:
    """rank/world from torchrun or accelerate's environment; gloo on CPU, NCCL on CUDA."""

    def __init__(self, device_choice: str):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device_choice == "auto" else device_choice.startswith("cuda")
        self.device = torch.device(f"cuda:{local}" if use_cuda and self.world > 1 else ("cuda" if use_cuda else "cpu"))
        if self.world > 1 and not torch.distributed.is_initialized():
            if use_cuda:
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")

    def mean(self, values: list[float]) -> list[float]:
        import torch

        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return (tensor / self.world).tolist()

    def total(self, values: list[float]) -> list[float]:
        """`values` summed over the ranks, in float64 (a collective: every rank calls it)."""
        import torch

        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather_all(self, values: list[float]) -> list[list[float]]:
        """Every rank's `values`, in rank order (one entry when not distributed)."""
        import torch

        if self.world == 1:
            return [values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        gathered = [torch.zeros_like(tensor) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, tensor)
        return [t.tolist() for t in gathered]

    def barrier(self) -> None:
        import torch

        if self.world > 1:
            torch.distributed.barrier()


STEP_FIELDS = ("step", "epoch", "grad_norm", "lr", "tokens", "tokens_per_s", "seconds")  # every other key: the loss's parts


def progress_line(record: dict[str, Any]) -> str:
    """One step as `neat-data train` prints it: the loss, then every part the loss's objective returned, by its own
    name (a new loss shows its parts without an edit here)."""
    parts = " ".join(f"{name} {record[name]:.4f}" for name in record if name not in STEP_FIELDS and name != "loss")
    return f"step {record['step']}: loss {record['loss']:.4f} ({parts}) grad {record['grad_norm']:.2f} {record['tokens_per_s']:.0f} tok/s"


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def run_train(config: TrainConfig, *, argv: list[str] | None = None, log: Any = None) -> TrainSummary:
    """Train and save; `log(record)` also receives every step record (the JSONL log is always written)."""
    import torch

    from neat_data.core.models import resolve_model
    from neat_data.lm.loading import load_policy, pad_id_of
    from neat_data.lm.logprobs import ResponseLogprobs
    from neat_data.train.data import epoch_batches, load_examples, make_batch, rank_share
    from neat_data.train.loss import LOSSES, LossInputs, LossSettings
    from neat_data.train.policy import choose_trainable, partial_folder, save_policy
    from neat_data.train.reference import reference_pass

    started = time.time()
    if config.threads:
        torch.set_num_threads(config.threads)
    dist = DistributedContext(config.device)
    cuda = dist.device.type == "cuda"
    bf16 = cuda if config.bf16 is None else config.bf16
    torch.manual_seed(config.seed)
    model_path = resolve_model(config.model)
    tokenizer, model, own_dtype = load_policy(model_path, str(dist.device))
    data_path, examples, stats = load_examples(
        config.data,
        tokenizer,
        max_length=config.max_length,
        max_candidates=config.max_candidates,
        loss=config.loss,
        dpo_pairs=config.dpo_pairs,
    )
    most_candidates = max(len(e.sequences) for e in examples)
    sft_weight = config.sft_weight if config.sft_weight is not None else LOSSES[config.loss].default_sft_weight(most_candidates)
    settings = LossSettings(rank_weight=config.rank_weight, sft_weight=sft_weight, beta=config.beta, dpo_pairs=config.dpo_pairs)
    pad_id = pad_id_of(tokenizer)
    reference = None
    if LOSSES[config.loss].needs_reference:  # the starting policy, before LoRA/sharding wrap it and before any step
        examples, reference = reference_pass(
            examples,
            model,
            pad_id,
            data_path=data_path,
            device=dist.device,
            bf16=bf16 and cuda,
            batch_size=config.prompts_per_batch * most_candidates,
            head_chunk=config.head_chunk,
            rank=dist.rank,
            world=dist.world,
            total=dist.total,
        )
    model = choose_trainable(
        model, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, top_layers=config.top_layers
    )
    if config.gradient_checkpointing if config.gradient_checkpointing is not None else cuda:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    forward = ResponseLogprobs(model, head_chunk=config.head_chunk, compile_decoder=config.compile)
    fsdp = dist.world > 1 and (config.fsdp if config.fsdp is not None else os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true")
    if fsdp:
        shard_policy(model, forward, dist.device.type, dist.world)
        wrapped = forward
    elif dist.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(forward, device_ids=[dist.device.index] if cuda else None)
    else:
        wrapped = forward
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay, **({"fused": True} if cuda else {}))
    batches_per_epoch = len(rank_share(epoch_batches(examples, config.prompts_per_batch, config.seed, 0), dist.rank, dist.world))
    total_steps = config.epochs * math.ceil(batches_per_epoch / config.grad_accum)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    partial = partial_folder(config.out)
    if dist.rank == 0:
        shutil.rmtree(partial, ignore_errors=True)  # a killed run's leftovers: training restarts from the base
    step, trained_tokens = 0, 0
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    for epoch in range(config.epochs):
        mine = rank_share(epoch_batches(examples, config.prompts_per_batch, config.seed, epoch), dist.rank, dist.world)
        for group_start in range(0, len(mine), config.grad_accum):
            group = mine[group_start : group_start + config.grad_accum]
            step_started = time.time()
            for group_param in optimizer.param_groups:
                group_param["lr"] = config.lr * lr_factor(step, total_steps, warmup)
            parts_sum: dict[str, float] = {}
            tokens = 0
            for index, examples_in_batch in enumerate(group):
                batch = make_batch(examples_in_batch, pad_id)
                skip_sync = dist.world > 1 and not fsdp and index < len(group) - 1  # DDP: all-reduce on the last micro-batch only
                with (
                    wrapped.no_sync() if skip_sync else nullcontext(),
                    torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and cuda else nullcontext(),
                ):
                    sums, counts = wrapped(
                        batch.input_ids.to(dist.device), batch.attention_mask.to(dist.device), batch.response_mask.to(dist.device)
                    )
                    inputs = LossInputs(
                        sums=scatter_to_slots(sums, batch, dist.device),
                        counts=scatter_to_slots(counts, batch, dist.device),
                        rewards=batch.rewards.to(dist.device),
                        candidate_mask=batch.candidate_mask.to(dist.device),
                        steering=batch.steering.to(dist.device),
                        reference_sums=None if batch.reference_sums is None else batch.reference_sums.to(dist.device),
                    )
                    loss, parts = LOSSES[config.loss](inputs, settings)
                    (loss / len(group)).backward()
                for name, value in parts.items():
                    parts_sum[name] = parts_sum.get(name, 0.0) + value / len(group)
                tokens += batch.tokens
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            names = sorted(parts_sum)
            averaged = dict(zip(names, dist.mean([parts_sum[n] for n in names])))
            step_tokens = int(dist.mean([float(tokens)])[0] * dist.world)
            trained_tokens += step_tokens
            seconds = time.time() - step_started
            record = {
                "step": step + 1,
                "epoch": epoch,
                **averaged,
                "grad_norm": grad_norm,
                "lr": optimizer.param_groups[0]["lr"],
                "tokens": step_tokens,
                "tokens_per_s": step_tokens / max(seconds, 1e-9),
                "seconds": round(seconds, 3),
            }
            first = first or record
            last = record
            step += 1
            if dist.rank == 0:
                _append_log(partial, json.dumps(record))
                if log is not None:
                    log(record)
    full_state = gather_full_state(model) if fsdp else None  # a collective: every rank takes part
    checksums = [checksum(full_state.values())] if full_state is not None else dist.gather_all(checksum(model.parameters()))
    elapsed = time.time() - started
    summary = TrainSummary(
        out=config.out,
        steps=step,
        prompts=stats.prompts,
        candidates=stats.candidates,
        tokens=trained_tokens,
        seconds=elapsed,
        tokens_per_second=trained_tokens / max(elapsed, 1e-9),
        first=first,
        last=last,
    )
    if dist.rank == 0:
        save_dtype = _save_dtype(config.save_dtype, own_dtype, cuda)
        details = {
            "config": config.model_dump(mode="json"),
            "command": argv,
            "base_model": model_path,
            "data": str(data_path),
            "data_stats": asdict(stats),
            "sft_weight": sft_weight,
            "reference": reference,
            "world_size": dist.world,
            "fsdp": fsdp,
            "rank_checksums": checksums,
            "bf16": bf16,
            "save_dtype": str(save_dtype).removeprefix("torch."),
            "summary": {k: v for k, v in asdict(summary).items() if k != "out"},
        }
        save_policy(
            model,
            tokenizer,
            config.out,
            save_dtype,
            {"neat_train.json": json.dumps(details, indent=2, default=str) + "\n"},
            state_dict=full_state,
        )
    dist.barrier()
    return summary


def checksum(tensors: Any) -> list[float]:
    """(Σ w, Σ w²) over the tensors in float64: equal on all DDP ranks when they stayed in sync."""
    import torch

    tensors = list(tensors)
    with torch.no_grad():
        return [sum(float(t.detach().double().sum()) for t in tensors), sum(float(t.detach().double().pow(2).sum()) for t in tensors)]


def shard_policy(model: Any, forward: Any, device_type: str, world: int) -> None:
    """FSDP2: one unit per decoder layer, the rest (embeddings, norm, head) in the root unit = our forward
    module, whose forward is the one the loop calls (so the root gathers its parameters)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (world,))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.get_decoder().layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(forward, mesh=mesh)


def gather_full_state(model: Any) -> dict[str, Any]:
    """The whole (unsharded) state dict on rank 0, on CPU; empty on the other ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):  # tied weights (a head tied to the
        if id(parameter) in seen:  # embeddings) are saved once, as
            state.pop(name, None)  # save_pretrained does
        seen.add(id(parameter))
    return state


def scatter_to_slots(per_sequence: Any, batch: Any, device: Any) -> Any:
    """[N] per-sequence values → [B, C] slots (padded slots 0; they are masked in every loss)."""
    import torch

    flat = torch.zeros(batch.candidate_mask.numel(), dtype=per_sequence.dtype, device=device)
    flat = flat.index_put((batch.slots.to(device),), per_sequence)
    return flat.view(batch.candidate_mask.shape)


def _append_log(partial: Path, line: str) -> None:
    """The step log grows in `<out>.partial/train_log.jsonl` while training runs (tail it)."""
    partial.mkdir(parents=True, exist_ok=True)
    with open(partial / "train_log.jsonl", "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _save_dtype(choice: str, own_dtype: Any, cuda: bool) -> Any:
    import torch

    if choice != "auto":
        return getattr(torch, choice)
    if not cuda:
        return torch.float32
    return getattr(torch, own_dtype) if isinstance(own_dtype, str) else own_dtype
