"""OpenAI-compatible backend (vLLM server, TGI, OpenAI): chat completions with bounded concurrency.

- `max_concurrency` requests in flight over a lean aiohttp client (neat_data.engines.openai_http; the openai
  SDK over httpx with `http_transport="httpx"`); an optional requests-per-minute limiter (`rpm`);
- retries on 429, 5xx, timeouts, connection errors and unparseable bodies, with exponential backoff + jitter
  that honours `Retry-After`; a refused connection, a DNS or a TLS failure is named as such, never "timeout";
- a server that returns fewer choices than `n` is detected once; the missing samples (and from then on
  all samples) come from separate n=1 requests with seeds seed+i, and rows record `n_fallback`;
- a 400 that rejects the system role switches to merging the system text into the first user turn;
- a request that still fails becomes an error result with the reason — never an exception, never a drop.
The API key is read from the environment variable named by `api_key_env` and is never logged or stored; every
error text is redacted (the key and any 16+ character piece of it) before it is cut to length.
The request body and the parsing of an answer are pure functions in neat_data.engines.openai_wire (the batch
backends write and read the same).
The asyncio loop runs in a worker thread so results stream back to the (synchronous) stage as they finish.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from neat_data.core.errors import redact_secret, register_secret_env
from neat_data.engines.base import Backend, Completion, GenerationRequest, RequestResult, Sampling, narrow
from neat_data.engines.openai_wire import UsageTotal, chat_body, parse_chat_response, rejects_system_role

_DONE = object()
RETRY_AFTER_CAP = 120.0  # seconds


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (a token bucket of size one)."""

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), or None."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class _Handoff:
    """Answers put for the caller vs answers it has taken (and counted): the loop pulls the next request only once
    the two are equal. `put` and `_taken` change in the loop's thread only; the caller's thread signals through it."""

    def __init__(self) -> None:
        self.put = 0
        self._taken = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._changed = loop, asyncio.Event()

    def taken(self) -> None:  # the caller's thread
        self._signal(self._take)

    def close(self) -> None:  # the caller's thread
        self._signal(self._close)

    def _signal(self, change: Any) -> None:
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(change)
        except RuntimeError:  # the loop has finished
            pass

    def _take(self) -> None:
        self._taken += 1
        assert self._changed is not None
        self._changed.set()

    def _close(self) -> None:
        self._closed = True
        assert self._changed is not None
        self._changed.set()

    async def caught_up(self) -> bool:
        """Wait until the caller has taken every answer; False once it has stopped taking any."""
        assert self._changed is not None
        while self._taken < self.put and not self._closed:
            self._changed.clear()
            await self._changed.wait()
        return not self._closed


class _Rejected(Exception):
    """A final, non-retryable failure of one request."""


class OpenAIOptions(BaseModel):
    """Options of an OpenAI-compatible client (backend openai, and an LLM judge on a server). Holds no secret: the
    key is read from the environment variable `api_key_env` names, when the backend is built."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(None, description="openai: endpoint, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the API key.")
    max_concurrency: int = Field(64, ge=1, le=4096, description="openai: requests in flight.")
    rpm: float | None = Field(None, gt=0, description="openai: requests-per-minute limit (none: unlimited).")
    request_timeout: float = Field(120.0, gt=0, description="openai: seconds per attempt before it is abandoned and retried.")
    max_retries: int = Field(6, ge=0, description="openai: retries per request on 429/5xx/timeouts/connection errors/bad bodies.")
    backoff_base: float = Field(0.5, ge=0, description="openai: first retry delay in seconds; doubles each retry (with jitter).")
    backoff_max: float = Field(30.0, ge=0, description="openai: longest retry delay in seconds.")
    http_transport: Literal["aiohttp", "httpx"] = Field(
        "aiohttp", description="openai: client transport (aiohttp: our lean client; httpx: the openai SDK, ~10x the CPU per request)."
    )

    @field_validator("base_url")
    @classmethod
    def _plain_url(cls, value: str | None) -> str | None:
        """An http(s) URL without credentials: a key in the URL would be stored in the manifest and clash with the
        client's own Authorization header (the key belongs in the variable `api_key_env` names)."""
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/v1")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials (user:key@host); put the key in the environment variable named by api_key_env")
        return value


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, model: str, options: OpenAIOptions, *, api_key: str | None = None):
        if not options.base_url:
            raise ValueError("the openai backend needs base_url")
        self.base_url = options.base_url
        self.model = model
        self._api_key = api_key or "EMPTY"  # local servers accept any key; never written anywhere
        self.max_concurrency = options.max_concurrency
        self.rpm = options.rpm
        self.timeout = options.request_timeout
        self.max_retries = options.max_retries
        self.backoff_base = options.backoff_base
        self.backoff_max = options.backoff_max
        self.transport = options.http_transport
        self.n_supported = True  # flips to False the first time a server returns fewer choices than n
        self.system_role_ok = True  # flips to False when the server rejects the system role
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:  # no key in reprs, tracebacks or logs
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r})"

    @classmethod
    def from_options(cls, model: str, options: OpenAIOptions, **_: Any) -> OpenAIBackend:
        """`model`: the served model name. The key comes from the environment, here and nowhere else."""
        plain = narrow(options, OpenAIOptions)
        register_secret_env(options.api_key_env)
        return cls(model, plain, api_key=os.environ.get(options.api_key_env))

    def _client(self) -> Any:
        """The HTTP client of one `generate` call: our lean aiohttp client, or the SDK over httpx (low concurrency)."""
        if self.transport == "aiohttp":
            from neat_data.engines.openai_http import ChatHTTPClient

            return ChatHTTPClient(self.base_url, self._api_key, max_connections=self.max_concurrency, timeout=self.timeout)
        from neat_data.engines.openai_http import SDKChatClient

        return SDKChatClient(self.base_url, self._api_key, max_connections=self.max_concurrency, timeout=self.timeout)

    def generate(self, requests: Iterable[GenerationRequest], sampling: Sampling) -> Iterator[tuple[int, RequestResult]]:
        results: queue.Queue[Any] = queue.Queue()
        failure: list[BaseException] = []
        handoff = _Handoff()

        def run_loop() -> None:
            try:
                asyncio.run(self._generate_all(requests, sampling, results, handoff))
            except BaseException as error:  # surfaced in the caller's thread below
                failure.append(error)
            finally:
                results.put(_DONE)

        worker = threading.Thread(target=run_loop, name="neat-openai", daemon=True)
        worker.start()
        try:
            while (item := results.get()) is not _DONE:
                yield item
                handoff.taken()  # the caller asked for the next answer: it has counted this one
        finally:
            handoff.close()  # a caller that stops early: no further request is pulled
        worker.join()
        if failure:
            raise failure[0]

    async def _generate_all(
        self, requests: Iterable[GenerationRequest], sampling: Sampling, results: queue.Queue[Any], handoff: _Handoff
    ) -> None:
        client = self._client()
        limiter = RateLimiter(self.rpm)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        handoff.attach(asyncio.get_running_loop())
        try:

            async def one(index: int, request: GenerationRequest) -> None:
                result = await self._generate_one(client, limiter, semaphore, request, sampling)
                handoff.put += 1
                results.put((index, result))

            # A request is pulled from `requests` only when a slot is free and the caller has taken every answer so
            # far: the caller's budget, checked as it hands out the next request, has counted every answered one, so
            # a cap is passed by at most what is in flight (max_concurrency requests), never by a read-ahead window.
            pending = iter(enumerate(requests))
            tasks: set[asyncio.Task[None]] = set()
            while await handoff.caught_up() and (item := next(pending, None)) is not None:
                tasks.add(asyncio.create_task(one(*item)))
                if len(tasks) >= self.max_concurrency:
                    done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
            if tasks:
                for finished in asyncio.as_completed(tasks):
                    await finished
        finally:
            await client.close()

    async def _generate_one(
        self, client: Any, limiter: RateLimiter, semaphore: asyncio.Semaphore, request: GenerationRequest, sampling: Sampling
    ) -> RequestResult:
        mode = "none" if request.merged_messages is None else "system"
        usage = UsageTotal()
        try:
            if mode == "system" and not self.system_role_ok:
                mode = "merged"
            messages = request.merged_messages if mode == "merged" and request.merged_messages is not None else request.messages
            try:
                completions, fallback = await self._samples(client, limiter, semaphore, messages, request, sampling, usage)
            except _Rejected as error:
                if mode == "system" and request.merged_messages is not None and rejects_system_role(str(error)):
                    self.system_role_ok = False
                    self.stats["system_role_fallback"] += 1
                    mode = "merged"
                    completions, fallback = await self._samples(
                        client, limiter, semaphore, request.merged_messages, request, sampling, usage
                    )
                else:
                    raise
            return RequestResult(
                completions=completions,
                system_mode=mode,
                n_fallback=fallback,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
        except _Rejected as error:
            self.stats["failed_requests"] += 1
            # servers may echo the key in an error body ("Incorrect API key provided: sk-…"); every reason was
            # redacted where it was made (_clean), before it was cut to length
            return RequestResult(
                error=str(error), system_mode=mode, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )

    async def _samples(
        self,
        client: Any,
        limiter: RateLimiter,
        semaphore: asyncio.Semaphore,
        messages: list[dict[str, str]],
        request: GenerationRequest,
        sampling: Sampling,
        usage: UsageTotal,
    ) -> tuple[list[Completion], bool]:
        completions: list[Completion] = []
        if self.n_supported or request.n == 1:
            completions = await self._call(client, limiter, semaphore, messages, request.n, request.seed, sampling, usage)
            if len(completions) >= request.n:
                return completions[: request.n], False
            if request.n > 1:
                self.n_supported = False
                self.stats["n_ignored"] += 1
        # The server ignored n: fetch each missing sample alone, seed + sample index keeps them distinct.
        singles = await asyncio.gather(
            *(
                self._call(client, limiter, semaphore, messages, 1, request.seed + i, sampling, usage)
                for i in range(len(completions), request.n)
            )
        )
        completions += [c[0] for c in singles if c]
        return completions, True

    async def _call(
        self,
        client: Any,
        limiter: RateLimiter,
        semaphore: asyncio.Semaphore,
        messages: list[dict[str, str]],
        n: int,
        seed: int,
        sampling: Sampling,
        usage: UsageTotal,
    ) -> list[Completion]:
        from neat_data.engines.openai_http import HTTPStatusFailure, TransportFailure

        body = chat_body(self.model, messages, n, seed, sampling)
        last_reason = "no attempt"
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            async with semaphore:
                await limiter.wait()
                self.stats["requests"] += 1
                try:
                    data = await client.post_json("/chat/completions", body)
                    completions = parse_chat_response(data, n)
                    usage.add(data)
                    return completions
                except HTTPStatusFailure as error:
                    status = error.status
                    last_reason = f"HTTP {status}: {self._clean(error.message)}"
                    if status != 429 and status < 500 and status not in (408, 409):
                        raise _Rejected(last_reason) from None
                    self.stats[f"retry_http_{status}"] += 1
                    wait = retry_after_seconds(error.headers)
                except TransportFailure as error:
                    last_reason = self._clean(error.reason)
                    self.stats[f"retry_{error.kind}"] += 1
                except ValueError as error:  # parse_chat_response: JSON, but not a chat.completion
                    last_reason = f"malformed response: {self._clean(str(error))}"
                    self.stats["retry_malformed"] += 1
            if attempt == self.max_retries:
                break
            self.stats["retries"] += 1
            backoff = min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + random.random() / 2)
            # the server's Retry-After wins over our backoff (capped, so a bogus header cannot park a worker)
            await asyncio.sleep(min(RETRY_AFTER_CAP, wait) if wait is not None else backoff)
        raise _Rejected(f"failed after {self.max_retries + 1} attempts: {last_reason}")

    def _clean(self, text: str) -> str:
        """An error text fit for a row: the key and any long piece of it redacted first, then cut to length (the
        other order can leave a prefix of the key that no longer matches it)."""
        return _short(redact_secret(text, self._api_key))

    def close(self) -> None:
        pass


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"
