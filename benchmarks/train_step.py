"""NEAT training steps (RRHF, PRO, DPO) vs a plain SFT step on the same tokens and model, side by side in one run.

Both steps take the same B prompts × C candidates = N sequences of T tokens (prompt P tokens + response),
run forward + backward + AdamW on the same randomly initialised model:
  SFT   transformers' own path: model(input_ids, attention_mask, labels=-100 on the prompt).loss
  NEAT  ours, per `--losses` (default rrhf): neat_data.lm.logprobs.ResponseLogprobs (decoder, then the output
        head on response tokens only) → the trainer's objective neat_data.train.loss.LOSSES[name] with its default
        SFT weight (rrhf, pro: ranking + LM term; dpo: against reference log-probs computed once before timing,
        as the trainer caches them, best-vs-worst pairs)
Steps alternate (SFT, NEAT-rrhf, NEAT-pro, …) after warm-up; the median step time of each is reported as tokens/s
(all N·T tokens), and the ratio NEAT/SFT (goal ≥ 1.0 on GPU). On CUDA it also prints MFU: model FLOPs of a full
LM step per token, 6·N + 12·L·H·T (N all parameters, the tied output head included; L layers, H hidden, T
sequence length: the PaLM paper's appendix B count, attention included), times tokens/s, over the card's dense
bf16 peak (`PEAK_BF16_TFLOPS`; `--peak-tflops` for others). The same count is used for every side, so a NEAT
step's MFU is "SFT-equivalent" (its head runs on response rows only and does ~7/8 of that work at P = T/8).
Under torchrun (`--distributed ddp|fsdp`) every rank runs the NEAT steps (no SFT side) on the same synthetic batch: DDP wraps the forward
module as the trainer does, FSDP2 shards one unit per decoder layer plus the root (trainer.shard_policy); tokens/s
are summed over ranks. `--json FILE` also writes the figures (scripts/gpu_check.sh reads them).

    .venv/bin/python benchmarks/train_step.py                      # CPU: SmolLM2-135M shape, 4×4×160 tokens
    python benchmarks/train_step.py --gpu                          # CUDA: Qwen2-0.5B shape, bf16, B16×T1024
    python benchmarks/train_step.py --gpu --compile                # + torch.compile of the decoder (both sides)
    python benchmarks/train_step.py --gpu --losses rrhf,pro,dpo     # every NEAT objective against the same SFT step
    torchrun --nproc-per-node 8 benchmarks/train_step.py --gpu --distributed fsdp

Only torch and transformers are needed (no pydantic/pyarrow): it imports neat_data.train.loss and neat_data.lm.logprobs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {
    # name: (hidden, layers, heads, kv_heads, intermediate, vocab, head_dim)
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, 64),
    "qwen2-0.5b": (896, 24, 14, 2, 4864, 151936, 64),
    "tiny": (64, 2, 2, 1, 128, 512, 32),  # smoke tests (scripts/gpu_check.sh --cpu)
}
# Dense bf16 peak TFLOP/s per GPU (vendor data sheets, without sparsity), matched on the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(device_name: str) -> float | None:
    for name, peak in PEAK_BF16_TFLOPS.items():  # longest names first where they overlap ("H100 NVL" before "H100")
        if name in device_name:
            return peak
    return None


def build_model(shape: str, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads, kv_heads, intermediate, vocab, head_dim = SHAPES[shape]
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if shape.startswith("qwen") else (LlamaConfig, LlamaForCausalLM)
    config = config_class(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        use_cache=False,
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 0.5B model's random init on the host takes seconds
        return model_class(config).to(dtype=torch.float32)


def make_batch(prompts: int, candidates: int, length: int, prompt_tokens: int, vocab: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(0)
    count = prompts * candidates
    input_ids = torch.randint(0, vocab, (count, length), generator=generator).to(device)
    attention_mask = torch.ones_like(input_ids)
    positions = torch.arange(length - 1, device=device).unsqueeze(0)
    response_mask = (positions >= prompt_tokens - 1).expand(count, -1).contiguous()
    labels = input_ids.clone()
    labels[:, :prompt_tokens] = -100
    rewards = torch.rand(prompts, candidates, generator=generator).to(device)
    return input_ids, attention_mask, response_mask, labels, rewards, torch.ones(prompts, candidates, device=device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="CUDA mode: bf16 autocast, Qwen2-0.5B shape, B16×T1024 by default.")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="Model shape (default: smollm2-135m on CPU, qwen2-0.5b on GPU).")
    parser.add_argument("--prompts", type=int, help="B (default 4).")
    parser.add_argument("--candidates", type=int, default=4, help="C per prompt.")
    parser.add_argument("--length", type=int, help="T tokens per sequence (default 160 CPU, 1024 GPU).")
    parser.add_argument("--prompt-tokens", type=int, help="P prompt tokens per sequence (default T/8).")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per side.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--losses", default="rrhf", help="NEAT objectives timed against SFT, comma-separated (rrhf, pro, dpo).")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder on both sides.")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--distributed", choices=["ddp", "fsdp"], help="Under torchrun: wrap as the trainer does.")
    parser.add_argument("--threads", type=int, help="CPU threads.")
    parser.add_argument("--profile", action="store_true", help="Also print the 12 costliest kernels of one step of each side.")
    parser.add_argument("--peak-tflops", type=float, help="Dense bf16 peak of the card (default: PEAK_BF16_TFLOPS by device name).")
    parser.add_argument("--json", help="Also write the figures to this file (rank 0).")
    args = parser.parse_args(argv)

    import os

    import torch

    from neat_data.lm.logprobs import ResponseLogprobs
    from neat_data.train.loss import LOSSES, LossInputs, LossSettings

    losses = [name.strip() for name in args.losses.split(",") if name.strip()]
    unknown = [name for name in losses if name not in LOSSES or name == "sft"]
    if unknown:
        parser.error(f"unknown NEAT loss {unknown[0]!r} (rrhf, pro, dpo)")
    if args.threads:
        torch.set_num_threads(args.threads)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = "cuda" if args.gpu else "cpu"
    if args.distributed:
        backend = "nccl" if args.gpu else "gloo"
        torch.distributed.init_process_group(backend)
        if args.gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if args.gpu:
        device = f"cuda:{torch.cuda.current_device()}"
    shape = args.shape or ("qwen2-0.5b" if args.gpu else "smollm2-135m")
    prompts = args.prompts or 4
    length = args.length or (1024 if args.gpu else 160)
    prompt_tokens = args.prompt_tokens or length // 8
    model = build_model(shape, device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    neat_forward = ResponseLogprobs(model)
    if args.compile:  # one compiled decoder, used by both sides
        compiled = torch.compile(model.model)
        neat_forward.decoder = compiled
        model.model = compiled
    params = sum(p.numel() for p in model.parameters())  # before FSDP2 shards them
    if args.distributed == "ddp":  # as the trainer: DDP around our forward module
        neat_forward = torch.nn.parallel.DistributedDataParallel(
            neat_forward, device_ids=[torch.cuda.current_device()] if args.gpu else None
        )
    elif args.distributed == "fsdp":  # as trainer.shard_policy: one unit per decoder layer, the forward module the root
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cuda" if args.gpu else "cpu", (world,))
        for layer in getattr(model.model, "_orig_mod", model.model).layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(neat_forward, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, **({"fused": True} if args.gpu else {}))
    input_ids, attention_mask, response_mask, labels, rewards, candidate_mask = make_batch(
        prompts, args.candidates, length, prompt_tokens, model.config.vocab_size, device
    )
    tokens = input_ids.numel()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.gpu else torch.autocast("cpu", enabled=False)
    steering = torch.tensor([[1, 1, -1, -1][c % 4] for c in range(args.candidates)], device=device).expand(prompts, -1)
    reference_sums = None
    if any(LOSSES[name].needs_reference for name in losses):  # DPO's reference pass, once (the trainer caches it)
        with torch.no_grad(), autocast:
            reference_sums = neat_forward(input_ids, attention_mask, response_mask)[0].view(prompts, args.candidates).float()
    last_parts: dict[str, dict[str, float]] = {}

    def sft_step() -> None:
        with autocast:
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def neat_step(name: str):
        settings = LossSettings(sft_weight=LOSSES[name].default_sft_weight(args.candidates))

        def step() -> None:
            with autocast:
                sums, counts = neat_forward(input_ids, attention_mask, response_mask)
                inputs = LossInputs(
                    sums=sums.view(prompts, args.candidates),
                    counts=counts.view(prompts, args.candidates),
                    rewards=rewards,
                    candidate_mask=candidate_mask,
                    steering=steering,
                    reference_sums=reference_sums,
                )
                loss, last_parts[name] = LOSSES[name](inputs, settings)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    # distributed: the NEAT steps only (a plain SFT step on the same parameters would need its own DDP/FSDP wrapper)
    sides = {**({} if args.distributed else {"sft": sft_step}), **{f"neat-{name}": neat_step(name) for name in losses}}

    def timed(step) -> float:
        if args.gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if args.gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for _ in range(args.warmup):
        for step in sides.values():
            timed(step)
    if args.gpu:
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.steps):
        for name, step in sides.items():
            times[name].append(timed(step))
    config = model.config
    flops_per_token = 6 * params + 12 * config.num_hidden_layers * config.hidden_size * length
    device_name = torch.cuda.get_device_name() if args.gpu else "cpu"
    peak = args.peak_tflops or (peak_tflops(device_name) if args.gpu else None)
    report: dict = {
        "device": device_name,
        "torch": torch.__version__,
        "shape": shape,
        "params": params,
        "world": world,
        "distributed": args.distributed,
        "compiled": args.compile,
        "dtype": "bf16 autocast" if args.gpu else "float32",
        "tokens_per_step": tokens * world,
        "flops_per_token": flops_per_token,
        "flop_formula": "6*N + 12*L*H*T per token (PaLM appendix B; N all parameters, tied head included)",
        "peak_tflops": peak,
        "sides": {},
    }
    if rank == 0:
        print(
            f"device {device_name} × {world}{' ' + args.distributed if args.distributed else ''} · torch {torch.__version__} · shape {shape} "
            f"({params / 1e6:.0f}M params) · B{prompts}×C{args.candidates}={prompts * args.candidates} sequences × T{length} "
            f"(prompt {prompt_tokens}) = {tokens} tokens/step/rank · {report['dtype']}{' · compiled' if args.compile else ''}"
            f"{' · grad-ckpt' if args.gradient_checkpointing else ''} · MFU: {report['flop_formula']} over "
            f"{f'{peak:g} TFLOP/s' if peak else 'no known peak'}"
        )
    for name in sides:
        median = statistics.median(times[name])
        rate = tokens * world / median
        mfu = rate * flops_per_token / (peak * 1e12 * world) if peak else None
        report["sides"][name] = {
            "median_step_s": median,
            "tokens_per_s": rate,
            "mfu": mfu,
            "steps_s": times[name],
            **last_parts.get(name[5:], {}),
        }
        if rank == 0:
            line = f"{name:>9}: median step {median * 1000:8.1f} ms  {rate:10.0f} tok/s"
            line += f"  MFU {mfu * 100:5.1f}%" if mfu is not None else ""
            print(line + f"  (steps: {', '.join(f'{t * 1000:.0f}' for t in times[name])} ms)")
    for name in sides:
        if name != "sft" and "sft" in sides:
            report["sides"][name]["ratio_to_sft"] = report["sides"][name]["tokens_per_s"] / report["sides"]["sft"]["tokens_per_s"]
            if rank == 0:
                print(f"ratio {name}/SFT tokens/s: {report['sides'][name]['ratio_to_sft']:.3f} (goal ≥ 1.0)")
    if args.gpu:
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if rank == 0:
            print(f"peak GPU memory {report['peak_memory_gib']:.1f} GiB")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CUDA] if args.gpu else [ProfilerActivity.CPU]
        for name, step in sides.items():
            with profile(activities=activities) as trace:
                timed(step)
            if rank == 0:
                print(f"--- {name}: costliest kernels")
                print(
                    trace.key_averages().table(
                        sort_by="cuda_time_total" if args.gpu else "cpu_time_total", row_limit=12, max_name_column_width=60
                    )
                )
    if args.json and rank == 0:
        import json

        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.distributed:
        torch.distributed.destroy_process_group()
    return report


if __name__ == "__main__":
    main()
