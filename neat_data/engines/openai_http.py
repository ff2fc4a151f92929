"""The HTTP clients of the OpenAI-compatible backend — a lean aiohttp client for the hot path and the openai SDK
(`SDKChatClient`, `transport="sdk"`) behind the same interface — and what a failed attempt was.

In:  JSON bodies to POST (`/chat/completions`), the base URL, the key (in memory only), a timeout per attempt.
Out: the decoded JSON answer, or one of two exceptions: `HTTPStatusFailure` (the server answered with an error
     status: its status, its message, its headers for Retry-After) or `TransportFailure` (no usable answer: a
     timeout, a refused connection, a DNS or TLS failure, a reset, a malformed body), each with a short `kind`
     (the stats key) and a `reason` (the text an error row carries).

Why not the SDK on this path: with 256 requests in flight a whole wave of replies arrives at once, and the
SDK's per-reply work (request options, httpx2 Request/Response objects, header merging) cost ~1 ms of client CPU
per reply — a 256-reply wave then delays the next wave by a quarter of a second (benchmarks/openai_backend.py).
What the SDK did that matters is kept: the `Authorization: Bearer` header, errors by status with the server's
`error.message`, the response headers for Retry-After, a timeout per attempt, proxies from the environment, and no
redirects (a redirect is an error, not a second request that would carry the key elsewhere).

`classify_transport_error` also reads the SDK's exceptions (the httpx transport, and the batch client's control
calls): it walks the cause chain, because the SDK's aiohttp transport reports a refused connection as
"Request timed out." (issue 10: a closed port showed as a timeout on every row).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import ssl
from typing import Any

import aiohttp
from yarl import URL


class HTTPStatusFailure(Exception):
    """The server answered `status`; `message` is its error text (the SDK's "Error code: N - message" form)."""

    def __init__(self, status: int, message: str, headers: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class TransportFailure(Exception):
    """No usable answer. `kind`: timeout | connection_refused | dns | tls | connection | malformed."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def status_message(status: int, raw: bytes) -> str:
    """The SDK's wording of an error answer: "Error code: 401 - <error.message>"; a body that is not an OpenAI
    error object (a proxy's HTML page) is quoted as text, so the reason is never just a number."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return f"Error code: {status}" + (f" - {text}" if text else "")
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        return f"Error code: {status} - {message}"
    return f"Error code: {status} - {text}"


def classify_transport_error(error: BaseException, timeout: float) -> tuple[str, str]:
    """(kind, reason) of an attempt that got no answer, from aiohttp, httpx or openai SDK exceptions.

    The whole cause/context chain is read, most specific first: a refused connection is "connection refused"
    even when a transport wrapped it in a timeout."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, ConnectionRefusedError) or (isinstance(item, OSError) and item.errno == errno.ECONNREFUSED):
            return "connection_refused", f"connection refused: {_first_line(item)}"
    for item in chain:
        if isinstance(item, (socket.gaierror, aiohttp.ClientConnectorDNSError)):
            return "dns", f"DNS lookup failed: {_first_line(item)}"
    for item in chain:
        if isinstance(item, (ssl.SSLError, ssl.CertificateError, aiohttp.ClientSSLError)):
            return "tls", f"TLS error: {_first_line(item)}"
    for item in chain:
        if isinstance(item, aiohttp.ConnectionTimeoutError) or type(item).__name__ == "ConnectTimeout":
            return "timeout", f"connect timeout after {min(timeout, CONNECT_TIMEOUT):g} s"
    for item in chain:
        if isinstance(item, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(item).__name__:
            return "timeout", f"timeout after {timeout:g} s"
    return "connection", f"connection error: {_first_line(chain[-1]) or type(chain[-1]).__name__}"


CONNECT_TIMEOUT = 10.0  # seconds to open a connection (capped by the attempt's own timeout)


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _env_proxy(url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for `url` (None: none, or NO_PROXY exempts its host)."""
    from aiohttp.helpers import get_env_proxy_for_url

    try:
        return get_env_proxy_for_url(url)
    except LookupError:
        return None, None


class ChatHTTPClient:
    """One aiohttp session: `max_connections` pooled connections, `timeout` seconds per attempt (connect included).

    Use inside the event loop that created it; `close()` when done."""

    def __init__(self, base_url: str, api_key: str, *, max_connections: int, timeout: float):
        self.timeout = timeout
        self._base = base_url.rstrip("/")
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json", "Accept": "application/json"},
            raise_for_status=False,
        )
        self._urls: dict[str, URL] = {}
        # HTTP(S)_PROXY / NO_PROXY from the environment, as the SDK's transports honour them — looked up once here:
        # aiohttp's trust_env looks them up on every request (~0.2 ms of CPU each, most of a reply's cost)
        self._proxy, self._proxy_auth = _env_proxy(URL(self._base))

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:  # parsed once per path: yarl parsing is a visible share of a reply's cost
            url = self._urls[path] = URL(self._base + path)
        return url

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        """POST `body` as JSON to base_url + path; the decoded JSON answer of a 2xx, else raises (see module doc)."""
        data = encode_json(body)
        try:
            async with self._session.post(
                self._url(path), data=data, allow_redirects=False, proxy=self._proxy, proxy_auth=self._proxy_auth
            ) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except aiohttp.ClientResponseError as error:  # a broken status line or headers: a malformed answer
            raise TransportFailure("malformed", f"malformed response: {_first_line(error)}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            kind, reason = classify_transport_error(error, self.timeout)
            raise TransportFailure(kind, reason) from None
        if not 200 <= status < 300:
            raise HTTPStatusFailure(status, status_message(status, raw), headers)
        try:
            return json.loads(raw)
        except ValueError as error:
            raise TransportFailure("malformed", f"malformed response: {error}") from None

    async def close(self) -> None:
        await self._session.close()


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, the bytes a request body is sent as (online) or written as (batch files). Text UTF-8 cannot
    hold (a lone surrogate from a badly decoded prompt) is \\u-escaped instead of failing the request."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class SDKChatClient:
    """The openai SDK over httpx behind ChatHTTPClient's interface (`post_json`, `close`): same exceptions, same
    reasons. ~10x the CPU per request of the lean client (benchmarks/openai_backend.py); for low concurrency."""

    def __init__(self, base_url: str, api_key: str, *, max_connections: int, timeout: float):
        import httpx2
        import openai

        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        httpx_timeout = httpx2.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))
        self.timeout = timeout
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=httpx_timeout,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=httpx_timeout),
        )

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        import openai

        try:
            # a plain body with cast_to=object: the SDK's request without its typed transform and response models
            return await self._client.post(path, cast_to=object, body=body)
        except openai.APIStatusError as error:
            raise HTTPStatusFailure(error.status_code, error.message, error.response.headers) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as error:
            kind, reason = classify_transport_error(error, self.timeout)
            raise TransportFailure(kind, reason) from None
        except (openai.APIResponseValidationError, ValueError) as error:
            raise TransportFailure("malformed", f"malformed response: {error}") from None

    async def close(self) -> None:
        await self._client.close()
