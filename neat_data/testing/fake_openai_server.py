"""A small OpenAI-compatible chat server that answers after a fixed latency and injects faults on demand.

Used by the tests (retries, fallbacks, error rows) and by benchmarks/openai_backend.py (client overhead).
Answers are deterministic: choice i of a request with seed s is "reply s+i: <last user text>".

Faults, chosen per request by a directive in the last user message (deterministic tests):
    [[fault:429]] [[fault:500]] [[fault:stall]] [[fault:garbage]] [[fault:truncated]] [[fault:reset]]
    [[fault:fewer]] (one choice whatever n) [[fault:empty]] (content null) [[fault:400]]
    [[fault:401]] (echoes the API key in the error body, as some servers do) [[fault:nousage]] (no `usage`)
A suffix xK (e.g. [[fault:429x2]]) applies the fault to the first K attempts of that request only, so
retries can succeed. Or at random, with `rates` (reliability suite). Server-wide switches: `ignore_n`
(always one choice), `reject_system` (400 on a system message, like templates without one) and `require_key`
(401 echoing the wrong key, on every endpoint; `error_padding` puts characters before it).

The Files and Batch APIs (upload, batches that walk validating → in_progress → finalizing → completed, failed,
expired, cancelled, malformed output lines) are in neat_data.testing.fake_batch_api, served by the same app.

    python -m neat_data.testing.fake_openai_server --port 8001 --latency 0.05
    python -m neat_data.testing.fake_openai_server --rate 500=0.2 --rate 429=0.1 --rate stall=0.05 --stall-seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from neat_data.testing.fake_batch_api import FakeBatchAPI

_DIRECTIVE = re.compile(r"\[\[fault:([a-z0-9]+?)(?:x(\d+))?\]\]")
FAULTS = ("429", "500", "stall", "garbage", "truncated", "reset", "fewer", "empty", "400", "401", "nousage")


@dataclass
class ServerSettings:
    latency: float = 0.0
    stall_seconds: float = 30.0
    retry_after: float = 0.05
    ignore_n: bool = False
    reject_system: bool = False
    rates: dict[str, float] = field(default_factory=dict)  # fault name -> probability per attempt
    seed: int = 0
    record: bool = True
    fixed_reply: str | None = None  # answer every request with this text (e.g. a judge's "Rating: 7")
    context_words: int | None = None  # longer prompts (in words) get vLLM's 400 "maximum context length" answer
    cut_at_max_tokens: bool = False  # a reply longer than max_tokens words is cut there, finish_reason "length" (as vLLM)
    error_padding: int = 0  # characters before the echoed key in a 401 message (puts the key where a cut falls)
    require_key: str | None = None  # every endpoint answers 401 echoing the key it got unless it is this one
    omit_usage: bool = False  # answer without the `usage` object (some servers do): nothing to count a budget with
    # Files + Batch APIs (neat_data.testing.fake_batch_api)
    batch_polls_per_state: int = 1  # retrievals before a batch moves on to its next state …
    batch_seconds_per_state: float = 0.0  # … and seconds it stays in each state at least
    batch_outcome: str = "completed"  # completed | failed (validation) | expired (partial output)
    batch_partial_lines: int | None = None  # lines an expired or cancelled batch ran (default: half)
    batch_report_unfinished: bool = False  # list an expired/cancelled batch's unfinished requests in its error file
    batch_max_lines: int = 50_000
    upload_delay: float = 0.0  # seconds an upload's answer waits after the file is stored (a test kills the client then)
    batch_create_delay: float = 0.0  # seconds a create's answer waits after the batch exists


class FakeOpenAIServer:
    """Start with `.start()` (background thread, free port) or `serve_forever()`; `.url` is the /v1 base URL."""

    def __init__(self, settings: ServerSettings | None = None, host: str = "127.0.0.1", port: int = 0):
        self.settings = settings or ServerSettings()
        self.host = host
        self.port = port or _free_port()
        self.requests: list[dict[str, Any]] = []  # request bodies received (when settings.record)
        self.faults: Counter[str] = Counter()
        self.authorizations: set[str] = set()  # Authorization headers received (when settings.record)
        self._attempts: Counter[str] = Counter()
        self._random = random.Random(self.settings.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.batch_api = FakeBatchAPI(self)  # /v1/files and /v1/batches; its counters are the tests' evidence

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 2**20, middlewares=[self._check_key])  # batch files: up to 200 MB
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self.batch_api.register(app)
        return app

    @web.middleware
    async def _check_key(self, request: web.Request, handler: Any) -> web.StreamResponse:
        expected = self.settings.require_key
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if expected is not None and given != expected:  # like OpenAI: the wrong key comes back in the message
            padding = "x" * self.settings.error_padding
            return web.json_response(
                {"error": {"message": f"{padding}Incorrect API key provided: {given}", "type": "invalid_api_key"}}, status=401
            )
        return await handler(request)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def choose_fault(self, body: dict[str, Any]) -> str | None:
        messages = body.get("messages") or []
        last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        match = _DIRECTIVE.search(last_user if isinstance(last_user, str) else "")
        if match:
            identity = hashlib.sha256(json.dumps([messages, body.get("seed"), body.get("n")], sort_keys=True).encode()).hexdigest()
            self._attempts[identity] += 1
            limit = int(match.group(2)) if match.group(2) else None
            if limit is None or self._attempts[identity] <= limit:
                return match.group(1)
            return None
        # one draw per attempt against cumulative thresholds, so each fault occurs at exactly its configured rate
        draw, threshold = self._random.random(), 0.0
        for name, rate in self.settings.rates.items():
            threshold += rate
            if draw < threshold:
                return name
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.settings.record:
            self.requests.append(body)
            self.authorizations.add(request.headers.get("Authorization", ""))
        fault = self.choose_fault(body)
        if self.settings.latency:
            await asyncio.sleep(self.settings.latency)
        if fault:
            self.faults[fault] += 1
        if fault == "stall":
            await asyncio.sleep(self.settings.stall_seconds)
        if fault == "garbage":
            return web.Response(text="<html>not json{", content_type="application/json")
        if fault == "reset":
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=500)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        status, payload, headers = self.answer(body, fault, key)
        if fault == "truncated" and status == 200:
            text = json.dumps(payload)
            return web.Response(text=text[: len(text) // 2], content_type="application/json")
        return web.json_response(payload, status=status, headers=headers)

    def answer(self, body: dict[str, Any], fault: str | None, key: str = "") -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON payload, headers) of a chat request under `fault`: the server's answer, also used for each
        line of a batch (neat_data.testing.fake_batch_api). Transport faults (stall, reset, garbage, truncated) are
        the caller's."""
        if fault == "429":
            return 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": f"{self.settings.retry_after:g}"}
        if fault == "500":
            return 500, {"error": {"message": "internal error", "type": "server_error"}}, {}
        if fault == "401":  # like OpenAI's "Incorrect API key provided: …": the key comes back in the body
            padding = "x" * self.settings.error_padding
            return 401, {"error": {"message": f"{padding}Incorrect API key provided: {key}", "type": "invalid_api_key"}}, {}
        if fault == "400":
            return 400, {"error": {"message": "bad request: unsupported parameter", "type": "invalid_request_error"}}, {}
        messages = body.get("messages") or []
        if self.settings.reject_system and any(m.get("role") == "system" for m in messages):
            return 400, {"error": {"message": "System role not supported", "type": "invalid_request_error"}}, {}
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in messages)
        if self.settings.context_words is not None and prompt_words > self.settings.context_words:
            message = (
                f"This model's maximum context length is {self.settings.context_words} tokens. However, your request has "
                f"{prompt_words} input tokens. Please reduce the length of the input messages."
            )
            return 400, {"error": {"message": message, "type": "BadRequestError"}}, {}
        n = int(body.get("n") or 1)
        if self.settings.ignore_n or fault == "fewer":
            n = 1
        seed = int(body.get("seed") or 0)
        last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        choices = []
        for i in range(n):
            text = None if fault == "empty" else (self.settings.fixed_reply or f"reply {seed + i}: {last_user}")
            finish = "stop"
            limit = body.get("max_tokens") or body.get("max_completion_tokens")
            if self.settings.cut_at_max_tokens and text is not None and limit and len(text.split()) > int(limit):
                text, finish = " ".join(text.split()[: int(limit)]), "length"
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        payload = {
            "id": f"chatcmpl-{seed}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_words, "completion_tokens": 5 * n, "total_tokens": prompt_words + 5 * n},
        }
        if self.settings.omit_usage or fault == "nousage":
            del payload["usage"]
        return 200, payload, {}

    def start(self) -> FakeOpenAIServer:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()  # a local name: stop() may forget self._loop first
            asyncio.set_event_loop(loop)
            runner = self._runner = web.AppRunner(self.app(), access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port, backlog=4096)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        """Stop serving (idempotent: a test may stop the server itself before its fixture does)."""
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._loop.stop)
            except RuntimeError:  # it closed in between
                pass
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--ignore-n", action="store_true")
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="FAULT=P",
        help=f"random fault rate per attempt, repeatable (faults: {', '.join(FAULTS)}), e.g. --rate 500=0.2",
    )
    parser.add_argument("--stall-seconds", type=float, default=30.0, help="how long a 'stall' fault holds the answer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    parser.add_argument("--batch-seconds-per-state", type=float, default=0.0, help="batches: seconds in each state at least")
    parser.add_argument("--batch-outcome", choices=["completed", "failed", "expired"], default="completed")
    args = parser.parse_args()
    rates = {name: float(value) for name, _, value in (spec.partition("=") for spec in args.rate)}
    unknown = set(rates) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault {sorted(unknown)[0]!r}")
    settings = ServerSettings(
        latency=args.latency,
        ignore_n=args.ignore_n,
        record=False,
        rates=rates,
        stall_seconds=args.stall_seconds,
        seed=args.seed,
        batch_seconds_per_state=args.batch_seconds_per_state,
        batch_outcome=args.batch_outcome,
    )
    server = FakeOpenAIServer(settings, host=args.host, port=args.port)
    web.run_app(server.app(), host=args.host, port=server.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
