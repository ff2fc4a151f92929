"""vllm-batch: the openai-batch files through vLLM's own run_batch on the tiny model. At temperature 0 its answers
equal the in-process vLLM backend's (the session engine), so the batch file format holds against a real
implementation; a second call answers from the stored output without starting vLLM again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neat_data.engines.base import GenerationRequest, Sampling
from neat_data.engines.openai_batch import OpenAIBatchOptions
from neat_data.engines.openai_wire import chat_body
from neat_data.engines.vllm_backend import VLLMBackend, VLLMOptions
from neat_data.engines.vllm_batch import VLLMBatchBackend

GREEDY = Sampling(temperature=0.0, top_p=1.0, max_tokens=12, seed=3)


def steered(text: str, n: int, seed: int, key: str) -> GenerationRequest:
    system = "You are a helpful, harmless and honest assistant."
    user = [{"role": "user", "content": text}]
    return GenerationRequest(
        messages=[{"role": "system", "content": system}, *user],
        merged_messages=[{"role": "user", "content": f"{system}\n\n{text}"}],
        n=n,
        seed=seed,
        id=key,
    )


# vLLM refuses n > 1 with greedy sampling ("n must be 1 when using greedy sampling"): one sample per request here
REQUESTS = [
    steered("How do I boil an egg?", 1, 11, "k-egg"),
    steered("What is the capital of France?", 1, 12, "k-paris"),
    GenerationRequest(
        messages=[{"role": "user", "content": "Tell me a joke about cats."}], merged_messages=None, n=1, seed=13, id="k-cats"
    ),
    GenerationRequest(
        messages=[
            {"role": "user", "content": "The quick brown fox"},
            {"role": "assistant", "content": "jumps"},
            {"role": "user", "content": "over what?"},
        ],
        merged_messages=None,
        n=1,
        seed=14,
        id="k-fox",
    ),
]


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_vllm_batch_answers_equal_the_vllm_backend_at_temperature_0(vllm_llm, tiny_model: Path, tmp_path: Path):
    online = dict(VLLMBackend(str(tiny_model), model_label="tiny", llm=vllm_llm).generate(REQUESTS, GREEDY))
    state = tmp_path / "batches"
    backend = VLLMBatchBackend(
        "tiny",
        VLLMOptions(max_model_len=1024, kv_cache_gb=1),
        OpenAIBatchOptions(),
        state_dir=state,
        model_path=str(tiny_model),
        seed=0,
        progress=False,
    )
    offline = dict(backend.generate(REQUESTS, GREEDY))
    assert backend.pending == {} and backend.stats["batches_submitted"] == 1, (state / "b00001-*.log", list(state.iterdir()))

    # the file vLLM ran is the openai-batch format: custom_id = the request id, body = the online backend's body
    lines = [json.loads(line) for line in next(state.glob("*.input.jsonl")).read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [r.id for r in REQUESTS]
    assert [line["body"] for line in lines] == [chat_body("tiny", r.messages, r.n, r.seed, GREEDY) for r in REQUESTS]

    for index, request in enumerate(REQUESTS):
        want, got = online[index], offline[index]
        assert want.error is None and got.error is None, (want.error, got.error)
        assert [c.text for c in got.completions] == [c.text for c in want.completions], index
        assert [c.finish_reason for c in got.completions] == [c.finish_reason for c in want.completions]
        assert got.completions[0].prompt_tokens == want.completions[0].prompt_tokens
        assert got.system_mode == want.system_mode == ("system" if request.merged_messages else "none")
        # the server reports usage per request: the prompt once, the completion tokens of all samples together
        assert got.prompt_tokens == want.completions[0].prompt_tokens
        assert got.completion_tokens == got.completions[0].completion_tokens == want.completions[0].completion_tokens
    assert any(c.text for result in offline.values() for c in result.completions)  # not trivially equal empty texts

    # a new backend on the same state folder answers from the stored output: no second run of vLLM
    again = VLLMBatchBackend(
        "tiny", VLLMOptions(max_model_len=1024), OpenAIBatchOptions(), state_dir=state, model_path=str(tiny_model), progress=False
    )
    replay = dict(again.generate(REQUESTS, GREEDY))
    assert again.stats["batches_submitted"] == 0 and again.stats["batch_reused_requests"] == len(REQUESTS)
    assert {i: [c.text for c in r.completions] for i, r in replay.items()} == {
        i: [c.text for c in r.completions] for i, r in offline.items()
    }


def test_vllm_batch_sends_merged_messages_when_the_template_rejects_the_system_role(tmp_path: Path):
    """As the vllm backend: the chat template decides before anything is sent (no engine needed to check it)."""
    pytest.importorskip("transformers")
    from tinymodel import build_tiny_model

    from neat_data.engines.batch_core import build_lines

    for no_system, merged in ((True, True), (False, False)):
        model = build_tiny_model(tmp_path / f"model-{no_system}", no_system_template=no_system)
        backend = VLLMBatchBackend(
            "tiny", VLLMOptions(), OpenAIBatchOptions(), state_dir=tmp_path / f"s-{no_system}", model_path=str(model)
        )
        assert backend._merge_system() is merged
        lines = build_lines(REQUESTS[:1], "tiny", GREEDY, merge_system=backend._merge_system())
        body = json.loads(lines.lines["k-egg"])["body"]
        assert body["messages"] == (REQUESTS[0].merged_messages if merged else REQUESTS[0].messages)


def test_run_batch_flags_are_the_engine_arguments_of_the_vllm_backend(tmp_path: Path):
    """vllm-batch runs the same engine as --backend vllm: its run_batch flags are VLLMOptions.engine_args, one by one."""
    from neat_data.engines.openai_batch import OpenAIBatchOptions
    from neat_data.engines.vllm_backend import VLLMOptions
    from neat_data.engines.vllm_batch import VLLMBatchBackend

    options = VLLMOptions(max_model_len=512, kv_cache_gb=3, enforce_eager=False, max_num_seqs=8)
    backend = VLLMBatchBackend("served", options, OpenAIBatchOptions(), state_dir=tmp_path, seed=3, model_path="/m")
    command, env = backend.command(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    args = options.engine_args("/m", seed=3, on_cpu=True)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and args.pop("kv_cache_memory_bytes") == 3 * 2**30
    assert args.pop("enforce_eager") is False and "--enforce-eager" not in command
    assert args.pop("enable_prefix_caching") is True and "--enable-prefix-caching" in command
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        assert command[command.index(flag) + 1] == str(value), flag
    assert command[command.index("--served-model-name") + 1] == "served"


def test_a_cpu_engine_gets_an_hour_per_step_unless_the_user_set_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """vLLM's 300 s step timeout killed a CPU engine mid-prefill (a 0.5B model, 16,384 tokens, 2 busy cores): every
    engine neat-data starts on CPU — in process or run_batch's subprocess — gets 3600 s; a value the user set wins."""
    from neat_data.engines.openai_batch import OpenAIBatchOptions
    from neat_data.engines.vllm_backend import VLLMOptions
    from neat_data.engines.vllm_batch import VLLMBatchBackend

    backend = VLLMBatchBackend("served", VLLMOptions(), OpenAIBatchOptions(), state_dir=tmp_path, seed=3, model_path="/m")
    monkeypatch.delenv("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", raising=False)
    assert backend.command(tmp_path / "in.jsonl", tmp_path / "out.jsonl")[1]["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "3600"
    monkeypatch.setenv("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "5")
    assert backend.command(tmp_path / "in.jsonl", tmp_path / "out.jsonl")[1]["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "5"
