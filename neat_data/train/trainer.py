"""The NEAT trainer: one short explicit loop over the `ranked` export.

In:  a run folder's `export/ranked/train.parquet` (or any ranked Parquet) and a policy (alias, folder, Hub id).
Out: an HF folder at `out` (weights, tokenizer, chat template, `neat_train.json`) and `train_log.jsonl`
     (one line per optimizer step: loss parts, ranking accuracy, grad norm, lr, tokens/s), written next to it
     while training runs (`<out>.partial/`) and moved into place at the end. One trainer per `out`: it holds the lock
     `.<out name>.lock` beside it (a second is refused with one line).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from neat_data.core import layout
from neat_data.core.runfolder import RunLock
from neat_data.core.stage import Stage, StageResult
from neat_data.train.distributed import DistributedContext, checksum, gather_full_state, scatter_to_slots, shard_policy
from neat_data.train.loss import LOSSES, DpoPairs, LossName


class TrainConfig(BaseModel):
    """One training run; saved in `<out>/neat_train.json`."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description=f"Run folder (uses {layout.RANKED_EXPORT.file}), an export folder, or a ranked Parquet file.")
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
        loss = LOSSES[self.loss]
        if not loss.ranks and self.sft_weight == 0:
            raise ValueError(f"loss {self.loss} with sft_weight 0 trains nothing")
        if loss.ranks and self.rank_weight == 0 and self.sft_weight == 0:
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

    def result(self) -> StageResult:
        return StageResult(
            [
                f"{self.steps} steps on {self.prompts} prompts × {self.candidates / max(self.prompts, 1):.1f} candidates, "
                f"{self.tokens} tokens in {self.seconds:.0f} s ({self.tokens_per_second:.0f} tok/s), loss "
                f"{self.first.get('loss', float('nan')):.4f} → {self.last.get('loss', float('nan')):.4f} → {self.out}"
            ]
        )


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

    started = time.time()
    if config.threads:
        torch.set_num_threads(config.threads)
    dist = DistributedContext(config.device)
    torch.manual_seed(config.seed)
    # The output's lock (an --out that is a file is refused here), taken once the model and the data are known good:
    # a second trainer on the same --out is refused at once instead of clearing this one's <out>.partial and saving
    # over its checkpoint.
    lock = RunLock(Path(config.out), beside=True) if dist.rank == 0 else nullcontext()
    policy = _load(config, dist)
    with lock:
        first, last, step, trained_tokens = _train_steps(config, dist, policy, log)
        full_state = gather_full_state(policy.model) if policy.fsdp else None  # a collective: every rank takes part
        checksums = [checksum(full_state.values())] if full_state is not None else dist.gather_all(checksum(policy.model.parameters()))
        elapsed = time.time() - started
        summary = TrainSummary(
            out=config.out,
            steps=step,
            prompts=policy.stats.prompts,
            candidates=policy.stats.candidates,
            tokens=trained_tokens,
            seconds=elapsed,
            tokens_per_second=trained_tokens / max(elapsed, 1e-9),
            first=first,
            last=last,
        )
        if dist.rank == 0:
            _save(config, dist, policy, summary, checksums, full_state, argv)
        dist.barrier()
    return summary


@dataclass
class _Policy:
    """What the loop trains: the model and its wrapped forward, the examples and the loss settings."""

    model: Any
    tokenizer: Any
    own_dtype: Any
    model_path: str
    data_path: Path
    examples: list[Any]
    stats: Any
    settings: Any
    sft_weight: float
    reference: Any
    pad_id: int
    cuda: bool
    bf16: bool
    fsdp: bool
    wrapped: Any = None
    trainable: list[Any] = field(default_factory=list)


def _load(config: TrainConfig, dist: DistributedContext) -> _Policy:
    """The policy and the data: examples rendered by `neat_data.lm`, w_sft, DPO's reference pass (on the starting
    policy, before LoRA or sharding wraps it), the trainable parameters, and the forward wrapped for DDP / FSDP2."""
    import torch

    from neat_data.core.models import resolve_model
    from neat_data.lm.loading import load_policy, pad_id_of
    from neat_data.lm.logprobs import ResponseLogprobs
    from neat_data.train.data import load_examples
    from neat_data.train.loss import LOSSES, LossSettings
    from neat_data.train.policy import choose_trainable
    from neat_data.train.reference import reference_pass

    cuda = dist.device.type == "cuda"
    bf16 = cuda if config.bf16 is None else config.bf16
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
    loss = LOSSES[config.loss]
    sft_weight = config.sft_weight if config.sft_weight is not None else loss.default_sft_weight(most_candidates)
    settings = LossSettings(rank_weight=config.rank_weight, sft_weight=sft_weight, beta=config.beta, dpo_pairs=config.dpo_pairs)
    pad_id = pad_id_of(tokenizer)
    reference = None
    if loss.needs_reference:
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
    return _Policy(
        model=model,
        tokenizer=tokenizer,
        own_dtype=own_dtype,
        model_path=model_path,
        data_path=data_path,
        examples=examples,
        stats=stats,
        settings=settings,
        sft_weight=sft_weight,
        reference=reference,
        pad_id=pad_id,
        cuda=cuda,
        bf16=bf16,
        fsdp=fsdp,
        wrapped=wrapped,
        trainable=[p for p in model.parameters() if p.requires_grad],
    )


def _train_steps(
    config: TrainConfig, dist: DistributedContext, policy: _Policy, log: Any
) -> tuple[dict[str, Any], dict[str, Any], int, int]:
    """AdamW with linear warmup + cosine decay over the epochs; gradient accumulation, clipping; every step's record
    to the partial folder's log (and `log`). Returns (first record, last record, steps, tokens)."""
    import torch

    from neat_data.train.data import epoch_batches, rank_share
    from neat_data.train.policy import partial_folder

    optimizer = torch.optim.AdamW(
        policy.trainable, lr=config.lr, weight_decay=config.weight_decay, **({"fused": True} if policy.cuda else {})
    )
    batches_per_epoch = len(rank_share(epoch_batches(policy.examples, config.prompts_per_batch, config.seed, 0), dist.rank, dist.world))
    total_steps = config.epochs * math.ceil(batches_per_epoch / config.grad_accum)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    partial = partial_folder(config.out)
    if dist.rank == 0:
        shutil.rmtree(partial, ignore_errors=True)  # a killed run's leftovers: training restarts from the base
    step, trained_tokens = 0, 0
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    for epoch in range(config.epochs):
        mine = rank_share(epoch_batches(policy.examples, config.prompts_per_batch, config.seed, epoch), dist.rank, dist.world)
        for group_start in range(0, len(mine), config.grad_accum):
            group = mine[group_start : group_start + config.grad_accum]
            step_started = time.time()
            for group_param in optimizer.param_groups:
                group_param["lr"] = config.lr * lr_factor(step, total_steps, warmup)
            parts_sum, tokens = _accumulate(config, dist, policy, group)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.trainable, config.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            names = sorted(parts_sum)
            clash = set(names) & set(STEP_FIELDS)
            if clash:  # a part named like a step field would overwrite it in the record (or be hidden by progress_line)
                raise ValueError(f"loss {config.loss} returns parts named like step fields: {sorted(clash)}")
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
    return first, last, step, trained_tokens


def _accumulate(config: TrainConfig, dist: DistributedContext, policy: _Policy, group: list[Any]) -> tuple[dict[str, float], int]:
    """Forward and backward over one optimizer step's micro-batches; returns the loss parts (averaged over them) and
    the tokens seen."""
    import torch

    from neat_data.train.data import make_batch
    from neat_data.train.loss import LOSSES, LossInputs

    parts_sum: dict[str, float] = {}
    tokens = 0
    for index, examples_in_batch in enumerate(group):
        batch = make_batch(examples_in_batch, policy.pad_id)
        skip_sync = dist.world > 1 and not policy.fsdp and index < len(group) - 1  # DDP: all-reduce on the last micro-batch only
        with (
            policy.wrapped.no_sync() if skip_sync else nullcontext(),
            torch.autocast("cuda", dtype=torch.bfloat16) if policy.bf16 and policy.cuda else nullcontext(),
        ):
            sums, counts = policy.wrapped(
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
            loss, parts = LOSSES[config.loss](inputs, policy.settings)
            (loss / len(group)).backward()
        for name, value in parts.items():
            parts_sum[name] = parts_sum.get(name, 0.0) + value / len(group)
        tokens += batch.tokens
    return parts_sum, tokens


def _save(
    config: TrainConfig,
    dist: DistributedContext,
    policy: _Policy,
    summary: TrainSummary,
    checksums: list[list[float]],
    full_state: dict[str, Any] | None,
    argv: list[str] | None,
) -> None:
    """The HF folder (weights in the save dtype, tokenizer, chat template) with `neat_train.json`: the config, the
    command, the data and its statistics, w_sft, the reference record, the world and each rank's weight checksum."""
    from neat_data.train.policy import save_policy

    save_dtype = _save_dtype(config.save_dtype, policy.own_dtype, policy.cuda)
    details = {
        "config": config.model_dump(mode="json"),
        "command": argv,
        "base_model": policy.model_path,
        "data": str(policy.data_path),
        "data_stats": asdict(policy.stats),
        "sft_weight": policy.sft_weight,
        "reference": policy.reference,
        "world_size": dist.world,
        "fsdp": policy.fsdp,
        "rank_checksums": checksums,
        "bf16": policy.bf16,
        "save_dtype": str(save_dtype).removeprefix("torch."),
        "summary": {k: v for k, v in asdict(summary).items() if k != "out"},
    }
    save_policy(
        policy.model,
        policy.tokenizer,
        config.out,
        save_dtype,
        {layout.TRAIN_RECORD.file: json.dumps(details, indent=2, default=str) + "\n"},
        state_dict=full_state,
    )


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


TRAIN = Stage(
    "train",
    TrainConfig,
    lambda config, argv: run_train(config, argv=argv).result(),
    reads=lambda c: [
        Path(c.data).parent if Path(c.data).suffix else layout.export(c.data, "ranked"),
        Path(c.model),
    ],  # the plan names the file
    writes=lambda c: [Path(c.out)],
    record=None,
    recipe_section="train",
)
