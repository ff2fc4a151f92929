"""Overhead of neat-data's generate stage over a bare `LLM.chat` call on the same vLLM engine.

Both sides send the same requests (same messages, n, seeds, sampling) to one shared engine, alternating,
`--repeats` times; the stage side also plans requests, builds rows, writes Parquet shards and the
manifest. Prints generated tokens/s of each (median) and the ratio ours/bare (goal ≥ 0.97).

    .venv/bin/python benchmarks/generate_overhead.py                 # SmolLM2 (embedded), 16 prompts (~4 min on 2 cores)
    .venv/bin/python benchmarks/generate_overhead.py --model /path/to/hf-folder --prompts 256
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16, help="bundled prompts to use")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from vllm import SamplingParams

    from neat_data.core.models import resolve_model
    from neat_data.core.pairs import load_libraries
    from neat_data.core.prompts_in import load_prompts
    from neat_data.core.resources import bundled_dir
    from neat_data.engines.base import Sampling
    from neat_data.engines.vllm_backend import VLLMBackend, VLLMOptions
    from neat_data.stages.generate.stage import GenerateConfig, plan_requests, run_generate, to_engine_request

    prompts = str(bundled_dir("pipelines") / "data" / "quickstart_prompts.jsonl")
    sampling = Sampling(max_tokens=args.max_tokens, temperature=0.8, seed=0)
    shared = VLLMBackend(resolve_model(args.model), model_label=args.model, options=VLLMOptions(max_model_len=2048))
    work = Path(tempfile.mkdtemp(prefix="neat-bench-"))

    def config(out: Path) -> GenerateConfig:
        return GenerateConfig(prompts=prompts, limit=args.prompts, model=args.model, out=out, num_pos=2, num_neg=2, sampling=sampling)

    # the bare side: exactly the requests the stage sends, straight into LLM.chat
    requests = [
        to_engine_request(p, "system")
        for p in plan_requests(config(work), load_prompts(prompts, limit=args.prompts).records, load_libraries(["harmless"]))
    ]
    params = [
        SamplingParams(n=r.n, seed=r.seed, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens)
        for r in requests
    ]

    def bare() -> tuple[float, int]:
        started = time.perf_counter()
        outputs = shared.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return time.perf_counter() - started, sum(len(c.token_ids) for o in outputs for c in o.outputs)

    def ours(index: int) -> tuple[float, int]:
        out = work / f"run{index}"
        started = time.perf_counter()
        run_generate(config(out), backend=shared, progress=False)
        seconds = time.perf_counter() - started
        import pyarrow.parquet as pq

        return seconds, sum(pq.read_table(out / "generations", columns=["completion_tokens"]).column(0).to_pylist())

    bare()  # warm-up (allocations, prefix cache populated equally for both sides afterwards)
    bare_rates, our_rates = [], []
    for index in range(args.repeats):
        seconds, tokens = bare()
        bare_rates.append(tokens / seconds)
        seconds, tokens = ours(index)
        our_rates.append(tokens / seconds)
    shared.close()
    shutil.rmtree(work, ignore_errors=True)
    bare_median, our_median = statistics.median(bare_rates), statistics.median(our_rates)
    print(f"requests: {len(requests)} (n=2 each), max_tokens {args.max_tokens}, model {args.model}, repeats {args.repeats}")
    print(f"bare LLM.chat      : {bare_median:8.1f} generated tok/s (runs: {', '.join(f'{r:.1f}' for r in bare_rates)})")
    print(f"neat-data generate : {our_median:8.1f} generated tok/s (runs: {', '.join(f'{r:.1f}' for r in our_rates)})")
    print(f"ratio ours/bare    : {our_median / bare_median:.3f}  (goal >= 0.97)")


if __name__ == "__main__":
    main()
