"""A process that asks a batch backend for N requests and appends each answer to a JSONL file, skipping the ids the
file already holds — as the generate stage writes rows and re-plans only missing keys. The kill tests SIGKILL it.

    python tests/batch_worker.py --url http://127.0.0.1:PORT/v1 --state DIR --out rows.jsonl --count 10000
    python tests/batch_worker.py --vllm-model tiny-model/ --state DIR --out rows.jsonl --count 6    # vllm-batch
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neat_data.engines.base import GenerationRequest, Sampling  # noqa: E402
from neat_data.engines.openai_backend import OpenAIOptions  # noqa: E402
from neat_data.engines.openai_batch import OpenAIBatchBackend, OpenAIBatchOptions  # noqa: E402

SAMPLING = Sampling(temperature=0.5, top_p=1.0, max_tokens=8, seed=0)


def worker_requests(count: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(messages=[{"role": "user", "content": f"question {i}"}], merged_messages=None, n=1, seed=i, id=f"row-{i:06d}")
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", help="openai-batch against this server")
    parser.add_argument("--vllm-model", help="vllm-batch with this local model instead")
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--max-requests", type=int, default=2500)
    parser.add_argument("--poll", type=float, default=0.2)
    args = parser.parse_args()
    done = set()
    if args.out.exists():
        done = {json.loads(line)["id"] for line in args.out.read_text().splitlines() if line.strip()}
    requests = [r for r in worker_requests(args.count) if r.id not in done]
    batch_options = OpenAIBatchOptions(batch_max_requests=args.max_requests, batch_poll_interval=args.poll, batch_poll_max=args.poll)
    if args.vllm_model:
        from neat_data.engines.vllm_backend import VLLMOptions
        from neat_data.engines.vllm_batch import VLLMBatchBackend

        backend: OpenAIBatchBackend | VLLMBatchBackend = VLLMBatchBackend(
            "tiny",
            VLLMOptions(max_model_len=1024, kv_cache_gb=1),
            batch_options,
            state_dir=args.state,
            model_path=args.vllm_model,
            seed=0,
            progress=False,
        )
    else:
        backend = OpenAIBatchBackend(
            "fake", OpenAIOptions(base_url=args.url, max_retries=2), batch_options, state_dir=args.state, progress=False
        )
    with open(args.out, "a", encoding="utf-8") as out:
        for index, result in backend.generate(requests, SAMPLING):
            text = result.completions[0].text if result.completions else None
            out.write(json.dumps({"id": requests[index].id, "text": text, "error": result.error}) + "\n")
            out.flush()
    print(json.dumps({"pending": len(backend.pending), **backend.stats}))


if __name__ == "__main__":
    main()
