"""The OpenAI backend against vLLM's real OpenAI-compatible server (one server per session, tiny model)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]


def test_generate_against_the_vllm_server(vllm_server: str, prompts_file: Path, tmp_path: Path):
    config = GenerateConfig(
        prompts=str(prompts_file),
        model="tiny",
        backend="openai",
        base_url=vllm_server,
        out=tmp_path / "run",
        num_pos=2,
        num_neg=2,
        num_neutral=1,
        sampling=Sampling(max_tokens=8, temperature=1.0, seed=2),
        max_concurrency=8,
    )
    summary = run_generate(config, progress=False)
    rows = pq.read_table(tmp_path / "run" / "generations").to_pylist()
    assert len(rows) == 20 and summary.counts["status"] == {"ok": 20}
    assert all(r["response"] is not None and r["finish_reason"] in ("stop", "length") for r in rows)
    assert not any(r["n_fallback"] for r in rows)  # vLLM honours n
    steered = [r for r in rows if r["steering"] != "none"]
    assert {r["system_mode"] for r in steered} == {"system"} and all(r["prompt_tokens"] > 0 for r in rows)
    groups = {}
    for r in steered:
        groups.setdefault((r["prompt_id"], r["steering"]), set()).add(r["response"])
    assert sum(len(texts) == 2 for texts in groups.values()) >= 5  # the n samples of a request differ


@pytest.mark.slow
def test_generate_against_a_data_parallel_vllm_server(tiny_model: Path, prompts_file: Path, tmp_path: Path):
    """docs/SCALING.md §3: one endpoint, several engines (`--data-parallel-size 2` on this CPU); the client is unchanged."""
    pytest.importorskip("vllm")
    from conftest import start_vllm_server, stop_server

    url, process = start_vllm_server(tiny_model, tmp_path / "dp_server.log", "--data-parallel-size", "2")
    try:
        config = GenerateConfig(
            prompts=str(prompts_file),
            model="tiny",
            backend="openai",
            base_url=url,
            out=tmp_path / "run",
            num_pos=2,
            num_neg=2,
            sampling=Sampling(max_tokens=8, seed=4),
            max_concurrency=16,
        )
        summary = run_generate(config, progress=False)
    finally:
        stop_server(process)
    rows = pq.read_table(tmp_path / "run" / "generations").to_pylist()
    assert summary.counts["status"] == {"ok": 16} and len({r["key"] for r in rows}) == 16
    assert all(r["response"] is not None and r["prompt_tokens"] > 0 for r in rows)
    log = (tmp_path / "dp_server.log").read_text(errors="replace")
    assert "EngineCore_DP0" in log and "EngineCore_DP1" in log, log[-2000:]  # two engine processes behind one server
