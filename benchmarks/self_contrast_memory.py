"""Self-contrast's log-prob pass: peak memory and time of the old full-logits path vs neat_data.lm.logprobs.

Both variants score the same B sequences of T tokens (P prompt + T−P response tokens) under the same
randomly initialised model with SmolLM2-135M's hidden size and 49k vocabulary (fewer layers: the decoder is
the same in both, the output head is what differs), without gradients:
  old   what scorers/self_contrast.py did: model(ids).logits[:, :-1].float() → log_softmax → gather → masked sum
        ([B, T, V] float32 logits and as large a log-softmax: ~1 GB each for 16 × 300 tokens)
  new   neat_data.lm.logprobs.candidate_logprobs: decoder, then the output head on response rows only, one
        [head_chunk, V] logits buffer at a time
Each variant runs in its own process; peak memory is the growth of the process's max RSS over its state
after the model and inputs exist (CPU) or torch.cuda.max_memory_allocated (CUDA). Prints the two, their
ratio, the median seconds of `--repeats` runs and the largest difference between the two variants' sums.

    .venv/bin/python benchmarks/self_contrast_memory.py                       # CPU, B16 × T300 (P240)
    python benchmarks/self_contrast_memory.py --device cuda --batch 64 --length 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_variant(args: argparse.Namespace) -> dict:
    import resource

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from neat_data.lm.logprobs import ResponseLogprobs, candidate_logprobs

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=args.layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(args.device).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, config.vocab_size, (args.length,), generator=generator).tolist() for _ in range(args.batch)]
    starts = [args.prompt_tokens] * args.batch

    def old() -> list[float]:
        ids = torch.tensor(sequences, device=args.device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1].float()
            token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            positions = torch.arange(ids.shape[1] - 1, device=ids.device).unsqueeze(0)
            return (token_logprobs * (positions >= args.prompt_tokens - 1)).sum(dim=1).tolist()

    forward = ResponseLogprobs(model, head_chunk=args.head_chunk)

    def new() -> list[float]:
        return [total for total, _ in candidate_logprobs(forward, sequences, starts, 0, batch_size=args.batch, device=args.device)]

    step = old if args.variant == "old" else new
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds, sums = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        sums = step()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    return {"peak_mib": peak / 2**20, "median_s": statistics.median(seconds), "sums": sums}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--prompt-tokens", type=int, default=240)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--head-chunk", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=["old", "new"], help=argparse.SUPPRESS)  # internal: one variant per process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("old", "new"):
        command = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
        finished = subprocess.run(command, capture_output=True, text=True, check=True)
        results[variant] = json.loads(finished.stdout.strip().splitlines()[-1])
    old, new = results["old"], results["new"]
    difference = max(abs(a - b) for a, b in zip(old["sums"], new["sums"]))
    print(f"B{args.batch} × T{args.length} (P{args.prompt_tokens}), vocab 49152, {args.device}:")
    print(f"  old full logits : peak +{old['peak_mib']:.0f} MiB, {old['median_s']:.2f} s")
    print(f"  new lm.logprobs : peak +{new['peak_mib']:.0f} MiB, {new['median_s']:.2f} s")
    print(
        f"  memory old/new {old['peak_mib'] / max(new['peak_mib'], 1e-9):.1f}×, time old/new {old['median_s'] / new['median_s']:.2f}×, "
        f"largest difference of the sums {difference:.2e}"
    )


if __name__ == "__main__":
    main()
