"""What the two offline batch backends (openai-batch, vllm-batch) share: batch files, and mapping them back.

In:  GenerationRequests (each with an `id`), the sampling, the model name.
Out: JSONL lines `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}` — `body` is exactly
     what the online backend POSTs (`openai_wire.chat_body`) — split into files under a request count and a byte
     size; and, from a finished batch's output and error files, one RequestResult per custom_id.

Mapping rules (`read_outcomes`): a 200 line → its completions (a body that is not a chat.completion → error
"malformed response"); any other status, or a line with an `error` object → error with the server's message; a
line that is not JSON → error for the custom_id it still names (else it is counted); a request with no line in
a finished batch → error naming the batch and its state ("missing from batch output (… completed)", "batch
expired before this request ran (…)"). Every error text is redacted (the API key, and any 16+ character piece
of it) before it is cut to length.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neat_data.core.errors import redact_secret
from neat_data.engines.base import GenerationRequest, RequestResult, Sampling
from neat_data.engines.batch_journal import BatchRecord
from neat_data.engines.openai_http import encode_json
from neat_data.engines.openai_wire import chat_body, parse_chat_response

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS_PER_FILE = 50_000  # the OpenAI Batch API's limits per input file
MAX_BYTES_PER_FILE = 200_000_000
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
SYSTEM_ROLE_HINT = "; the server rejects the system role: re-run with --system-mode merged"


def request_custom_id(request: GenerationRequest, line_body: dict[str, Any]) -> str:
    """The request's own id, else one derived from its body (identical requests then share one line)."""
    if request.id:
        return request.id
    return "req-" + hashlib.sha256(encode_json(line_body)).hexdigest()[:32]


@dataclass
class BatchLines:
    """The unique lines of one `generate` call: custom_id → line bytes, and the request indices each answers."""

    lines: dict[str, bytes]
    indices: dict[str, list[int]]
    sent_merged: dict[str, bool]  # custom_id → the merged (system-in-user) messages were sent


def build_lines(requests: list[GenerationRequest], model: str, sampling: Sampling, *, merge_system: bool = False) -> BatchLines:
    """One line per distinct custom_id. `merge_system`: send `merged_messages` where a request has them (vllm-batch,
    when the chat template rejects the system role). Two requests with one id and different bodies → ValueError."""
    lines: dict[str, bytes] = {}
    indices: dict[str, list[int]] = {}
    merged: dict[str, bool] = {}
    for index, request in enumerate(requests):
        use_merged = merge_system and request.merged_messages is not None
        messages = request.merged_messages if use_merged and request.merged_messages is not None else request.messages
        body = chat_body(model, messages, request.n, request.seed, sampling)
        custom_id = request_custom_id(request, body)
        line = encode_json({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body})
        if custom_id in lines and lines[custom_id] != line:
            raise ValueError(f"two requests share the id {custom_id!r} but differ in their bodies")
        lines[custom_id] = line
        indices.setdefault(custom_id, []).append(index)
        merged[custom_id] = use_merged
    return BatchLines(lines, indices, merged)


def split_lines(lines: list[bytes], max_requests: int, max_bytes: int) -> tuple[list[list[bytes]], list[bytes]]:
    """(files, too_large): consecutive lines packed into files of at most `max_requests` lines and `max_bytes`
    bytes (newlines included); a single line over `max_bytes` cannot be sent and is returned apart."""
    files: list[list[bytes]] = []
    too_large: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        cost = len(line) + 1
        if cost > max_bytes:
            too_large.append(line)
            continue
        if current and (len(current) >= max_requests or size + cost > max_bytes):
            files.append(current)
            current, size = [], 0
        current.append(line)
        size += cost
    if current:
        files.append(current)
    return files, too_large


def line_custom_id(line: bytes) -> str | None:
    match = _CUSTOM_ID.search(line)
    if not match:
        return None
    try:
        return json.loads(b'"' + match.group(1) + b'"')
    except ValueError:
        return None


def line_digest(line: bytes) -> bytes:
    """A line's identity in 16 bytes: a re-run attaches only to a batch holding exactly the line it would send."""
    return hashlib.blake2b(line, digest_size=16).digest()


def read_input_ids(path: Path) -> dict[str, bytes]:
    """custom_id → `line_digest` of each line of a batch input file as written (the journal's evidence of what was
    submitted; digests, not lines, so a million journaled requests cost megabytes, not the files' gigabytes)."""
    ids: dict[str, bytes] = {}
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw.rstrip(b"\r\n")
            if line:
                custom_id = line_custom_id(line)
                if custom_id is not None:
                    ids[custom_id] = line_digest(line)
    return ids


def short_text(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _error_text(error: Any) -> str:
    """The message of an `error` field: a string, {"message": …}, {"error": {"message": …}} (vLLM's ErrorResponse)."""
    if isinstance(error, dict):
        nested = error.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else error
        message, code = inner.get("message"), inner.get("code")
        if message:
            return f"{code}: {message}" if isinstance(code, str) and code else str(message)
        return json.dumps(error)[:500]
    return str(error)


def outcome_of_line(data: Any, label: str, secret: str | None) -> RequestResult:
    """The RequestResult of one parsed output/error line (see the module doc)."""

    def failed(reason: str) -> RequestResult:
        text = short_text(redact_secret(reason, secret))
        if "system" in text.lower() and ("role" in text.lower() or "not supported" in text.lower()):
            text += SYSTEM_ROLE_HINT
        return RequestResult(error=f"{text} ({label})")

    if not isinstance(data, dict):
        return failed("malformed output line: not a JSON object")
    response = data.get("response") if isinstance(data.get("response"), dict) else None
    status = response.get("status_code") if response else None
    if data.get("error") is not None and status in (None, 200):
        return failed(_error_text(data["error"]))
    if response is None:
        return failed("malformed output line: no response")
    body = response.get("body")
    if status != 200:
        message = _error_text(body) if body else _error_text(data.get("error") or "no body")
        return failed(f"HTTP {status}: {message}")
    try:
        completions = parse_chat_response(body, 1)  # as many completions as choices: the stage checks them against n
    except ValueError as error:
        return failed(f"malformed response: {error}")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return RequestResult(
        completions=completions,
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
    )


def read_outcomes(record: BatchRecord, state_dir: Path, requested: dict[str, bytes], secret: str | None) -> dict[str, RequestResult]:
    """custom_id → RequestResult for every custom_id of `record`'s input (`requested`, as `read_input_ids` gives it),
    from its output and error files in `state_dir` (absent files: no lines)."""
    label = f"batch {record.batch_id or record.name}"
    found: dict[str, RequestResult] = {}
    malformed = 0
    for suffix in ("output", "errors"):
        path = state_dir / f"{record.name}.{suffix}.jsonl"
        if not path.exists():
            continue
        with open(path, "rb") as handle:
            for raw in handle:
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    data = json.loads(raw)
                    custom_id = data.get("custom_id") if isinstance(data, dict) else None
                except ValueError:
                    data, custom_id = None, line_custom_id(raw)
                if custom_id not in requested:
                    malformed += 1
                    continue
                if data is None:
                    result = RequestResult(error=f"malformed output line: not JSON ({label})")
                else:
                    result = outcome_of_line(data, label, secret)
                if custom_id not in found or found[custom_id].error is not None:  # an ok line wins over an error line
                    found[custom_id] = result
    missing_reason = _missing_reason(record, label, malformed, secret)
    return {custom_id: found.get(custom_id) or RequestResult(error=missing_reason) for custom_id in requested}


def _missing_reason(record: BatchRecord, label: str, malformed: int, secret: str | None) -> str:
    if record.status == "failed":
        detail = "; ".join(record.errors) or "no reason given"
        return f"batch failed: {short_text(redact_secret(detail, secret))} ({label})"
    if record.status in ("expired", "cancelled"):
        return f"batch {record.status} before this request ran ({label})"
    extra = f", {malformed} malformed or unknown lines" if malformed else ""
    return f"missing from batch output ({label} {record.status}{extra})"
