"""The OpenAI-compatible backend against our fault-injecting server: retries, fallbacks, error rows."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from neat_data.engines.base import GenerationRequest, Sampling
from neat_data.engines.openai_backend import OpenAIBackend, OpenAIOptions, retry_after_seconds
from neat_data.stages.generate.stage import GenerateConfig, run_generate

SAMPLING = Sampling(max_tokens=8, seed=0)


def backend_for(server, api_key: str | None = None, **kwargs) -> OpenAIBackend:
    settings = dict(base_url=server.url, max_concurrency=8, request_timeout=2.0, max_retries=4, backoff_base=0.01, backoff_max=0.1)
    settings.update(kwargs)
    return OpenAIBackend("fake", OpenAIOptions(**settings), api_key=api_key)


def request(text: str, n: int = 2, seed: int = 7, system: str | None = "Be kind.") -> GenerationRequest:
    user = [{"role": "user", "content": text}]
    if system is None:
        return GenerationRequest(messages=user, merged_messages=None, n=n, seed=seed)
    return GenerationRequest(
        messages=[{"role": "system", "content": system}, *user],
        merged_messages=[{"role": "user", "content": f"{system}\n\n{text}"}],
        n=n,
        seed=seed,
    )


def run(backend: OpenAIBackend, requests: list[GenerationRequest]) -> dict:
    return dict(backend.generate(requests, SAMPLING))


def test_n_samples_seed_and_messages_sent(fake_server):
    server = fake_server()
    results = run(backend_for(server), [request("hello", n=3, seed=11)])
    assert [c.text for c in results[0].completions] == ["reply 11: hello", "reply 12: hello", "reply 13: hello"]
    assert results[0].system_mode == "system" and not results[0].n_fallback
    body = server.requests[0]
    assert (
        body["n"] == 3
        and body["seed"] == 11
        and body["max_tokens"] == 8
        and body["messages"][0] == {"role": "system", "content": "Be kind."}
    )


@pytest.mark.parametrize("fault", ["429", "500", "garbage", "truncated", "reset"])
def test_transient_faults_are_retried_until_success(fake_server, fault):
    server = fake_server()
    backend = backend_for(server)
    results = run(backend, [request(f"[[fault:{fault}x2]] hi")])
    assert results[0].error is None and len(results[0].completions) == 2
    assert len(server.requests) == 3 and backend.stats["requests"] == 3
    assert sum(v for k, v in backend.stats.items() if k.startswith("retry_")) == 2


def test_retry_after_is_honoured(fake_server):
    server = fake_server(retry_after=0.4)
    backend = backend_for(server, backoff_base=0.0)
    started = time.monotonic()
    results = run(backend, [request("[[fault:429x1]] hi")])
    assert results[0].error is None and time.monotonic() - started >= 0.4
    assert backend.stats["retry_http_429"] == 1
    assert retry_after_seconds({"retry-after": "3"}) == 3.0 and retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({}) is None


def test_stall_past_the_timeout_is_retried(fake_server):
    server = fake_server(stall_seconds=5.0)
    backend = backend_for(server, request_timeout=0.5)
    results = run(backend, [request("[[fault:stallx1]] hi")])
    assert results[0].error is None and backend.stats["retry_timeout"] == 1


def test_persistent_failure_becomes_an_error_with_the_reason(fake_server):
    server = fake_server()
    results = run(backend_for(server, max_retries=2), [request("[[fault:500]] hi"), request("fine")])
    assert results[0].completions == [] and results[0].error.startswith("failed after 3 attempts: HTTP 500")
    assert results[1].error is None  # one bad request never takes the others down


def test_client_errors_are_not_retried(fake_server):
    server = fake_server()
    results = run(backend_for(server), [request("[[fault:400]] hi")])
    assert "HTTP 400" in results[0].error and len(server.requests) == 1


def test_server_ignoring_n_falls_back_to_single_requests(fake_server):
    server = fake_server(ignore_n=True)
    backend = backend_for(server)
    results = run(backend, [request("a", n=3, seed=5)])
    assert [c.text for c in results[0].completions] == ["reply 5: a", "reply 6: a", "reply 7: a"]
    assert results[0].n_fallback and not backend.n_supported
    assert [body["n"] for body in server.requests] == [3, 1, 1]
    # billed: three calls, each with the 3-word prompt ("Be kind." + "a") and 5 completion tokens per choice
    assert (results[0].prompt_tokens, results[0].completion_tokens) == (9, 15)


def test_server_rejecting_the_system_role_gets_it_merged(fake_server):
    server = fake_server(reject_system=True)
    backend = backend_for(server)
    results = run(backend, [request("a"), request("b", system=None)])
    assert results[0].system_mode == "merged" and results[0].completions[0].text == "reply 7: Be kind.\n\na"
    assert results[1].system_mode == "none" and results[1].error is None


def test_empty_content_becomes_an_error_row_through_the_stage(fake_server, tmp_path: Path):
    server = fake_server()
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "[[fault:empty]] a"}, {"prompt": "b"}])
    config = GenerateConfig(
        prompts=str(prompts),
        model="fake",
        backend="openai",
        base_url=server.url,
        out=tmp_path / "run",
        num_pos=1,
        num_neg=1,
        sampling=SAMPLING,
        backoff_base=0.01,
    )
    run_generate(config, progress=False)
    rows = pq.read_table(tmp_path / "run" / "generations").to_pylist()
    assert len(rows) == 4
    bad = [r for r in rows if r["status"] == "error"]
    assert len(bad) == 2 and all("no text" in r["error"] for r in bad)


def test_rpm_limiter_spaces_requests(fake_server):
    server = fake_server()
    started = time.monotonic()
    run(backend_for(server, rpm=600), [request(f"q{i}", n=1) for i in range(4)])  # 0.1 s apart
    assert time.monotonic() - started >= 0.3


def test_httpx_transport_works_too(fake_server):
    server = fake_server()
    results = run(backend_for(server, http_transport="httpx"), [request("a")])
    assert results[0].completions[0].text == "reply 7: a"


def test_api_key_is_sent_but_never_in_repr(fake_server, monkeypatch):
    server = fake_server()
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    config = GenerateConfig(
        prompts="x.jsonl", model="fake", backend="openai", base_url=server.url, out=Path("unused"), api_key_env="MY_KEY"
    )
    backend = OpenAIBackend.from_options(config.model, config)
    assert "sk-secret" not in repr(backend) and "sk-secret" not in repr(vars(config))
    run(backend, [request("a", n=1)])


def test_parse_chat_response_orders_choices_and_rejects_malformed_bodies():
    from neat_data.engines.openai_wire import parse_chat_response

    body = {
        "choices": [
            {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
            {"index": 0, "message": {"content": "a"}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 9},
    }
    parsed = parse_chat_response(body, 2)
    assert [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in parsed] == [
        ("a", "stop", 7, None),
        ("b", "length", 7, None),
    ]
    single = parse_chat_response({"choices": [{"message": {"content": None}}]}, 1)
    assert single[0].text is None and single[0].completion_tokens is None
    for bad in ([], {"choices": []}, {"choices": "x"}, {"choices": [{"index": 0}]}, {"choices": [{"message": {"content": 3}}]}):
        with pytest.raises(ValueError):
            parse_chat_response(bad, 1)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_closed_port_is_connection_refused_not_a_timeout(transport):
    """Issue 10: a closed port was reported as "timeout after 120 s" on every row of a run that took one second."""
    from neat_data.testing.fake_openai_server import _free_port

    backend = OpenAIBackend(
        "fake", OpenAIOptions(base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=1, backoff_base=0.01, http_transport=transport)
    )
    started = time.monotonic()
    results = run(backend, [request("a")])
    assert results[0].error.startswith("failed after 2 attempts: connection refused: ") and "timeout" not in results[0].error
    assert backend.stats["retry_connection_refused"] == 2 and time.monotonic() - started < 10


def test_transport_errors_are_named_by_their_cause():
    import socket
    import ssl

    import aiohttp

    from neat_data.engines.openai_http import classify_transport_error

    def chained(outer: BaseException, cause: BaseException) -> BaseException:
        outer.__cause__ = cause
        return outer

    dns = socket.gaierror(-2, "Name or service not known")
    assert classify_transport_error(chained(TimeoutError("Request timed out."), dns), 120)[0] == "dns"  # the cause wins
    assert classify_transport_error(ssl.SSLCertVerificationError(1, "certificate verify failed"), 120) == (
        "tls",
        "TLS error: certificate verify failed",
    )
    assert classify_transport_error(TimeoutError(), 1.5) == ("timeout", "timeout after 1.5 s")
    assert classify_transport_error(aiohttp.ServerDisconnectedError(), 1.5)[0] == "connection"
    assert (
        classify_transport_error(chained(RuntimeError("x"), ConnectionRefusedError(111, "Connect call failed")), 9)[0]
        == "connection_refused"
    )


def test_a_key_echoed_where_the_reason_is_cut_is_redacted_first(fake_server):
    """The server's message puts the key at characters 270-313: cutting to 300 first would keep 30 of its characters,
    which no longer match the whole key."""
    key = "sk-" + "z" * 40
    server = fake_server(error_padding=224)
    results = run(backend_for(server, api_key=key), [request("[[fault:401]] a")])
    error = results[0].error
    assert len(f"Error code: 401 - {'x' * 224}Incorrect API key provided: ") == 270
    assert error.endswith("Incorrect API key provided: ***") and "z" * 16 not in error


def test_redact_secret_replaces_the_key_and_long_pieces_of_it():
    from neat_data.core.errors import redact_secret

    key = "sk-proj-" + "AbCdEfGh" * 5
    assert redact_secret(f"bad key {key}!", key) == "bad key ***!"
    assert redact_secret(f"got {key[:20]}… and {key[-16:]}", key) == "got ***… and ***"  # pieces of 16+ characters
    assert redact_secret(f"short {key[:15]}", key) == f"short {key[:15]}"  # 15 characters prove nothing
    assert redact_secret(f"{key}{key}", key) == "***"
    assert redact_secret("EMPTY key EMPTY", "EMPTY") == "EMPTY key EMPTY"  # placeholders are not secrets
    assert redact_secret("a 1234567890 b", "1234567890") == "a *** b"  # a short real key is still replaced whole
    assert redact_secret("nothing here", None) == "nothing here"


def test_text_utf8_cannot_hold_is_escaped_not_a_failed_request(fake_server):
    """A lone surrogate (a prompt decoded with errors="surrogateescape") used to fail encoding as "malformed response"."""
    server = fake_server()
    results = run(backend_for(server), [request("bad \udcff byte", n=1, system=None)])
    assert results[0].error is None and results[0].completions[0].text == "reply 7: bad \udcff byte"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_proxy_named_by_the_environment_is_used(fake_server, monkeypatch, transport):
    """HTTP_PROXY is honoured as the SDK honours it: the fake server, acting as the proxy, answers for a host that
    does not exist."""
    server = fake_server()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    backend = OpenAIBackend("fake", OpenAIOptions(base_url="http://no-such-host.invalid:1/v1", max_retries=0, http_transport=transport))
    results = run(backend, [request("via the proxy", n=1)])
    assert results[0].error is None and results[0].completions[0].text == "reply 7: via the proxy"
