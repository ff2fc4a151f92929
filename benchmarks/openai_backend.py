"""Client-side cost of `OpenAIBackend` against a local fake OpenAI server.

The fake server (neat_data.testing.fake_openai_server) runs as a separate process, so the CPU numbers
below are the benchmark process's only (time.process_time(), all threads).

(a) Throughput: latency 0.05 s, concurrency 256, 3,000 requests (n=1, distinct seeds), for
    OpenAIBackend(transport="aiohttp": our lean aiohttp client), OpenAIBackend(transport="httpx": the SDK)
    and a bare loop (openai.AsyncOpenAI + DefaultAioHttpClient + asyncio.Semaphore). Prints req/s (wall),
    client CPU ms per request and ours/bare ratios.                             Goal: >= 600 req/s.
(b) Latency hiding: latency 2.0 s, concurrency 256, 3 waves (768 requests). Prints achieved req/s over
    the ideal concurrency/latency (128 req/s), for OpenAIBackend(aiohttp) and the bare loop.  Goal: >= 0.9.

Each figure is the median of --repeats runs (fresh client each run, variants interleaved, server warm,
~200 warm-up requests per variant before (a)).

    .venv/bin/python benchmarks/openai_backend.py            # full config (~3 min on 2 cores)
    .venv/bin/python benchmarks/openai_backend.py --quick    # smoke test, < 20 s (its goal verdicts mean nothing)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neat_data.engines.base import GenerationRequest, Sampling  # noqa: E402
from neat_data.engines.openai_backend import OpenAIBackend, OpenAIOptions  # noqa: E402

MODEL = "fake"
SAMPLING = Sampling(temperature=0.8, top_p=0.95, max_tokens=16, seed=0)
TIMEOUT = 60.0
THROUGHPUT_GOAL = 600.0  # req/s, scenario (a), OpenAIBackend(aiohttp)
EFFICIENCY_GOAL = 0.9  # achieved / ideal, scenario (b)


@contextlib.contextmanager
def fake_server(latency: float) -> Iterator[str]:
    """A fake server in its own process on a free port; yields its /v1 base URL and kills it afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "neat_data.testing.fake_openai_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--latency",
            str(latency),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"fake server exited with code {process.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("fake server did not answer GET /v1/models within 20 s") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_requests(count: int, first_seed: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            messages=[{"role": "user", "content": "Say hello in five words."}], merged_messages=None, n=1, seed=first_seed + i
        )
        for i in range(count)
    ]


def run_ours(transport: str) -> Callable[[str, int, list[GenerationRequest]], int]:
    def run(url: str, concurrency: int, requests: list[GenerationRequest]) -> int:
        backend = OpenAIBackend(
            MODEL,
            OpenAIOptions(base_url=url, max_concurrency=concurrency, request_timeout=TIMEOUT, max_retries=0, http_transport=transport),
        )
        answered = errors = 0
        for _, result in backend.generate(requests, SAMPLING):
            answered += 1
            errors += result.error is not None
        return errors + len(requests) - answered

    return run


def run_bare(url: str, concurrency: int, requests: list[GenerationRequest]) -> int:
    import httpx2
    import openai

    async def main() -> int:
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        timeout = httpx2.Timeout(TIMEOUT, connect=10.0)
        client = openai.AsyncOpenAI(
            base_url=url,
            api_key="x",
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultAioHttpClient(limits=limits, timeout=timeout),
        )
        semaphore = asyncio.Semaphore(concurrency)

        async def one(request: GenerationRequest) -> int:
            async with semaphore:
                try:
                    await client.chat.completions.create(
                        model=MODEL,
                        messages=request.messages,
                        n=request.n,
                        seed=request.seed,
                        temperature=SAMPLING.temperature,
                        top_p=SAMPLING.top_p,
                        max_tokens=SAMPLING.max_tokens,
                    )
                    return 0
                except openai.OpenAIError:
                    return 1

        try:
            return sum(await asyncio.gather(*(one(request) for request in requests)))
        finally:
            await client.close()

    return asyncio.run(main())


OURS = "ours (aiohttp)"
CLIENTS = {OURS: run_ours("aiohttp"), "ours (httpx)": run_ours("httpx"), "bare openai+aiohttp": run_bare}


def measure(names: list[str], url: str, concurrency: int, count: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median req/s, CPU ms/request and total errors per client; repeats are interleaved across clients."""
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names:
            requests = make_requests(count, first_seed=repeat * count)
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            errors = CLIENTS[name](url, concurrency, requests)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            samples[name].append((count / wall, 1000 * cpu / count, errors))
    return {
        name: {
            "rps": statistics.median(s[0] for s in runs),
            "min": min(s[0] for s in runs),
            "max": max(s[0] for s in runs),
            "cpu_ms": statistics.median(s[1] for s in runs),
            "errors": sum(s[2] for s in runs),
        }
        for name, runs in samples.items()
    }


def spread(result: dict[str, float], digits: int) -> str:
    return f"({result['min']:.{digits}f}-{result['max']:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAIBackend client overhead vs a bare openai loop.")
    parser.add_argument("--requests", type=int, help="requests per run in scenario (a) (default 3000)")
    parser.add_argument("--concurrency", type=int, help="requests in flight, both scenarios (default 256)")
    parser.add_argument("--repeats", type=int, help="runs per measurement, median printed (default 3)")
    parser.add_argument("--quick", action="store_true", help="small config for smoke-testing (< 20 s)")
    args = parser.parse_args()
    if args.quick:
        config = dict(requests=300, concurrency=64, repeats=1, warmup=50, latency_a=0.05, latency_b=0.5)
    else:
        config = dict(requests=3000, concurrency=256, repeats=3, warmup=200, latency_a=0.05, latency_b=2.0)
    for key in ("requests", "concurrency", "repeats"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    concurrency, repeats = config["concurrency"], config["repeats"]
    bare = "bare openai+aiohttp"

    print(
        f"(a) throughput: latency {config['latency_a']:g} s, concurrency {concurrency}, {config['requests']} requests, median of {repeats}"
    )
    with fake_server(config["latency_a"]) as url:
        measure(list(CLIENTS), url, concurrency, config["warmup"], 1)  # warm-up: imports, server, sockets
        results = measure(list(CLIENTS), url, concurrency, config["requests"], repeats)
    print(
        f"  {'client':<21}{'req/s':>8}{'(min-max)':>14}{'CPU ms/req':>12}{'req/s vs bare':>15}{'CPU vs bare':>13}"
        f"{'errors':>8}  goal >= {THROUGHPUT_GOAL:g} req/s"
    )
    for name, r in results.items():
        verdict = ("ok" if r["rps"] >= THROUGHPUT_GOAL else "MISSED") if name == OURS else "-"
        print(
            f"  {name:<21}{r['rps']:>8.0f}{spread(r, 0):>14}{r['cpu_ms']:>12.2f}"
            f"{r['rps'] / results[bare]['rps']:>14.2f}x{r['cpu_ms'] / results[bare]['cpu_ms']:>12.2f}x{r['errors']:>8}  {verdict}"
        )

    waves = 3 * concurrency
    ideal = concurrency / config["latency_b"]
    print(
        f"\n(b) latency hiding: latency {config['latency_b']:g} s, concurrency {concurrency}, {waves} requests (3 waves), "
        f"ideal {ideal:g} req/s, median of {repeats}"
    )
    throughput = results[OURS]["rps"]
    with fake_server(config["latency_b"]) as url:
        results = measure([OURS, bare], url, concurrency, waves, repeats)
    print(f"  {'client':<21}{'req/s':>8}{'(min-max)':>14}{'CPU ms/req':>12}{'of ideal':>10}{'errors':>8}  goal >= {EFFICIENCY_GOAL:g}")
    for name, r in results.items():
        verdict = ("ok" if r["rps"] / ideal >= EFFICIENCY_GOAL else "MISSED") if name == OURS else "-"
        print(f"  {name:<21}{r['rps']:>8.1f}{spread(r, 1):>14}{r['cpu_ms']:>12.2f}{r['rps'] / ideal:>10.3f}{r['errors']:>8}  {verdict}")
    efficiency = results[OURS]["rps"] / ideal
    print(
        f"\ngoals (OpenAIBackend, aiohttp): (a) {throughput:.0f} req/s at {config['latency_a']:g} s / C={concurrency} "
        f"(goal >= {THROUGHPUT_GOAL:g}): {'ok' if throughput >= THROUGHPUT_GOAL else 'MISSED'}; (b) {efficiency:.3f} of ideal at "
        f"{config['latency_b']:g} s / C={concurrency} (goal >= {EFFICIENCY_GOAL:g}): {'ok' if efficiency >= EFFICIENCY_GOAL else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
