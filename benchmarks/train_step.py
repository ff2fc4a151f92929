"""NEAT training step vs a plain SFT step on the same tokens and model, side by side in one run.

Both steps take the same B prompts × C candidates = N sequences of T tokens (prompt P tokens + response),
run forward + backward + AdamW on the same randomly initialised model:
  SFT   transformers' own path: model(input_ids, attention_mask, labels=-100 on the prompt).loss
  NEAT  ours: neat_data.lm.logprobs.ResponseLogprobs (decoder, then the output head on response tokens
        only, in checkpointed chunks) → neat_data.train.loss.neat_loss (RRHF + LM), as the trainer runs it
Steps alternate (SFT, NEAT, SFT, …) after warm-up; the median step time of each is reported as tokens/s
(all N·T tokens), and the ratio NEAT/SFT (goal ≥ 0.9). On CUDA it also prints MFU: model FLOPs of a full
LM step (6·params·tokens + 12·layers·hidden·T·tokens, the PaLM appendix B count, output head included)
per second over the card's dense bf16 peak (H100 SXM 989 TFLOP/s, H200 the same; `--peak-tflops`).

    .venv/bin/python benchmarks/train_step.py                      # CPU: SmolLM2-135M shape, 4×4×160 tokens
    python benchmarks/train_step.py --gpu                          # CUDA: Qwen2-0.5B shape, bf16, B16×T1024
    python benchmarks/train_step.py --gpu --compile                # + torch.compile of the decoder (both sides)

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
}


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
    return model_class(config).to(device=device, dtype=torch.float32)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="CUDA mode: bf16 autocast, Qwen2-0.5B shape, B16×T1024 by default.")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="Model shape (default: smollm2-135m on CPU, qwen2-0.5b on GPU).")
    parser.add_argument("--prompts", type=int, help="B (default 4).")
    parser.add_argument("--candidates", type=int, default=4, help="C per prompt.")
    parser.add_argument("--length", type=int, help="T tokens per sequence (default 160 CPU, 1024 GPU).")
    parser.add_argument("--prompt-tokens", type=int, help="P prompt tokens per sequence (default T/8).")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per side.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder on both sides.")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, help="CPU threads.")
    parser.add_argument("--profile", action="store_true", help="Also print the 12 costliest kernels of one step of each side.")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="Dense bf16 peak of the card (H100/H200 SXM: 989).")
    args = parser.parse_args()

    import torch

    from neat_data.lm.logprobs import ResponseLogprobs
    from neat_data.train.loss import neat_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    shape = args.shape or ("qwen2-0.5b" if args.gpu else "smollm2-135m")
    prompts = args.prompts or 4
    length = args.length or (1024 if args.gpu else 160)
    prompt_tokens = args.prompt_tokens or length // 8
    model = build_model(shape, device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    neat_forward = ResponseLogprobs(model)
    sft_model = model
    if args.compile:  # one compiled decoder, used by both sides
        compiled = torch.compile(model.model)
        neat_forward.decoder = compiled
        model.model = compiled
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, **({"fused": True} if args.gpu else {}))
    input_ids, attention_mask, response_mask, labels, rewards, candidate_mask = make_batch(
        prompts, args.candidates, length, prompt_tokens, model.config.vocab_size, device
    )
    tokens = input_ids.numel()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.gpu else torch.autocast("cpu", enabled=False)

    def sft_step() -> None:
        with autocast:
            loss = sft_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def neat_step() -> None:
        with autocast:
            sums, counts = neat_forward(input_ids, attention_mask, response_mask)
            scores = (sums / counts).view(prompts, args.candidates)
            loss, _ = neat_loss(scores, rewards, candidate_mask, rank_loss="rrhf")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(step) -> float:
        if args.gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if args.gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for _ in range(args.warmup):
        timed(sft_step)
        timed(neat_step)
    if args.gpu:
        torch.cuda.reset_peak_memory_stats()
    times = {"sft": [], "neat": []}
    for _ in range(args.steps):
        times["sft"].append(timed(sft_step))
        times["neat"].append(timed(neat_step))
    params = sum(p.numel() for p in model.parameters())
    config = model.config
    flops_per_token = 6 * params + 12 * config.num_hidden_layers * config.hidden_size * length
    print(
        f"device {torch.cuda.get_device_name() if args.gpu else 'cpu'} · torch {torch.__version__} · shape {shape} ({params / 1e6:.0f}M params) · "
        f"B{prompts}×C{args.candidates}={prompts * args.candidates} sequences × T{length} (prompt {prompt_tokens}) = {tokens} tokens/step · "
        f"{'bf16 autocast' if args.gpu else 'float32'}{' · compiled' if args.compile else ''}{' · grad-ckpt' if args.gradient_checkpointing else ''}"
    )
    rates = {}
    for name in ("sft", "neat"):
        median = statistics.median(times[name])
        rates[name] = tokens / median
        line = f"{name:>4}: median step {median * 1000:8.1f} ms  {rates[name]:10.0f} tok/s"
        if args.gpu:
            line += f"  MFU {rates[name] * flops_per_token / (args.peak_tflops * 1e12) * 100:5.1f}%"
        print(line + f"  (steps: {', '.join(f'{t * 1000:.0f}' for t in times[name])} ms)")
    if args.gpu:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"ratio NEAT/SFT tokens/s: {rates['neat'] / rates['sft']:.3f} (goal ≥ 0.9)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CUDA] if args.gpu else [ProfilerActivity.CPU]
        for name, step in (("sft", sft_step), ("neat", neat_step)):
            with profile(activities=activities) as trace:
                timed(step)
            print(f"--- {name}: costliest kernels")
            print(
                trace.key_averages().table(
                    sort_by="cuda_time_total" if args.gpu else "cpu_time_total", row_limit=12, max_name_column_width=60
                )
            )


if __name__ == "__main__":
    main()
