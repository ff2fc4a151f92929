"""The OpenAI Files and Batch APIs of the fake server (neat_data.testing.fake_openai_server), for the batch backend's tests.

    POST /v1/files (multipart: file, purpose)    GET /v1/files[?purpose=]    GET /v1/files/{id}    GET /v1/files/{id}/content
    POST /v1/batches (input_file_id, endpoint, completion_window, metadata)  GET /v1/batches[?after=&limit=]
    GET /v1/batches/{id}    POST /v1/batches/{id}/cancel

A batch walks validating → in_progress → finalizing → completed. It moves on when it has been retrieved
`batch_polls_per_state` times *and* `batch_seconds_per_state` seconds have passed in its state (so a test
can kill a client at a known point); each line is answered by the chat endpoint's own logic, with the same
fault directives (`[[fault:500]]` → an error line in the error file, `[[fault:garbage]]` → a malformed output
line, `[[fault:fewer]]`, `[[fault:empty]]`, …). Server-wide outcomes: `batch_outcome="failed"` (validation
error), `"expired"` (only `batch_partial_lines` lines ran); a cancel leaves the same partial output. Input
that the real API refuses fails validation too: a line that is not JSON, a missing field, another endpoint,
a duplicate custom_id, more than `batch_max_lines` lines. `upload_delay` / `batch_create_delay` hold an answer
after the file or batch exists (a client killed then has created it without knowing its id). Counts: `batch_submissions` (batches created per
input file) and `submitted_custom_ids` (how often each custom_id was submitted in any batch).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TERMINAL = ("completed", "failed", "expired", "cancelled")
ENDPOINT = "/v1/chat/completions"


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    lines: list[dict[str, Any]] = field(default_factory=list)  # the parsed input lines (after validation)
    status: str = "validating"
    state_polls: int = 0
    state_since: float = field(default_factory=time.monotonic)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    stamps: dict[str, int] = field(default_factory=dict)  # in_progress_at, completed_at, …


class FakeBatchAPI:
    """Files + batches state of one fake server; `register(app)` adds the routes."""

    def __init__(self, server: Any):
        """`server`: the FakeOpenAIServer that serves these routes (its settings, counters and lock)."""
        self.server = server
        self.files: dict[str, dict[str, Any]] = {}  # id → metadata + "content" bytes
        self.batches: dict[str, FakeBatch] = {}
        self.batch_submissions: Counter[str] = Counter()  # input_file_id → batches created from it
        self.submitted_custom_ids: Counter[str] = Counter()
        self.uploads = 0
        self.polls = 0
        self._ids = itertools.count(1)

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files", self._list_files)
        app.router.add_get("/v1/files/{file_id}", self._retrieve_file)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list_batches)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel)

    # ------------------------------------------------------------------------------------------------ files
    def _new_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = f"file-{next(self._ids):06d}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "content": content,
        }
        return self.files[file_id]

    @staticmethod
    def _public(file: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in file.items() if k != "content"}

    def _record_auth(self, request: web.Request) -> None:
        if self.server.settings.record:
            self.server.authorizations.add(request.headers.get("Authorization", ""))

    async def _upload(self, request: web.Request) -> web.Response:
        self._record_auth(request)
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField) or not isinstance(purpose, str):
            return _error(400, "multipart form needs 'file' and 'purpose'")
        content = upload.file.read()
        self.uploads += 1
        stored = self._new_file(content, upload.filename or "upload.jsonl", purpose)
        if self.server.settings.upload_delay:  # the file exists; the client does not know its id yet
            await asyncio.sleep(self.server.settings.upload_delay)
        return web.json_response(self._public(stored))

    async def _list_files(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        data = [self._public(f) for f in reversed(self.files.values()) if purpose is None or f["purpose"] == purpose]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _retrieve_file(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["file_id"])
        return web.json_response(self._public(file)) if file else _error(404, "No such File object")

    async def _file_content(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["file_id"])
        if file is None:
            return _error(404, "No such File object")
        return web.Response(body=file["content"], content_type="application/octet-stream")

    # ---------------------------------------------------------------------------------------------- batches
    async def _create(self, request: web.Request) -> web.Response:
        self._record_auth(request)
        body = await request.json()
        file = self.files.get(body.get("input_file_id", ""))
        if file is None:
            return _error(400, f"No such input file: {body.get('input_file_id')!r}")
        if body.get("endpoint") != ENDPOINT or body.get("completion_window") != "24h":
            return _error(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        batch = FakeBatch(
            id=f"batch_{next(self._ids):06d}",
            input_file_id=file["id"],
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            metadata=body.get("metadata"),
            created_at=int(time.time()),
        )
        self.batches[batch.id] = batch
        self.batch_submissions[file["id"]] += 1
        self._validate(batch, file["content"])
        if self.server.settings.batch_create_delay:  # the batch exists; the client does not know its id yet
            await asyncio.sleep(self.server.settings.batch_create_delay)
        return web.json_response(self._view(batch))

    def _validate(self, batch: FakeBatch, content: bytes) -> None:
        """Parse the input file as the real API does; a problem → the batch fails validation (on its first poll)."""
        settings = self.server.settings
        seen: set[str] = set()
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                custom_id = line["custom_id"]
                if line.get("method") != "POST" or line.get("url") != batch.endpoint or not isinstance(line.get("body"), dict):
                    raise ValueError("method must be POST, url the batch's endpoint and body an object")
            except (ValueError, KeyError, TypeError) as error:
                batch.errors.append({"code": "invalid_request", "message": f"invalid line: {error}", "line": number, "param": None})
                continue
            if custom_id in seen:
                batch.errors.append(
                    {"code": "duplicate_custom_id", "message": f"duplicate custom_id {custom_id!r}", "line": number, "param": None}
                )
            seen.add(custom_id)
            batch.lines.append(line)
        if len(batch.lines) > settings.batch_max_lines:
            batch.errors.append(
                {"code": "too_many_requests", "message": f"more than {settings.batch_max_lines} requests", "line": None, "param": None}
            )
        if settings.batch_outcome == "failed" and not batch.errors:
            batch.errors.append(
                {"code": "invalid_model", "message": "The model does not support the batch API", "line": None, "param": None}
            )
        if not batch.errors:
            for line in batch.lines:
                self.submitted_custom_ids[line["custom_id"]] += 1
        batch.counts["total"] = len(batch.lines)

    async def _list_batches(self, request: web.Request) -> web.Response:
        ordered = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)  # newest first, as the API lists
        after = request.query.get("after")
        if after:
            ordered = [b for b in ordered if b.id < after]
        limit = int(request.query.get("limit", "20"))
        page = ordered[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": [self._view(b) for b in page],
                "has_more": len(ordered) > limit,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        )

    async def _retrieve(self, request: web.Request) -> web.Response:
        self._record_auth(request)
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "No such batch")
        self.polls += 1
        batch.state_polls += 1
        self._advance(batch)
        return web.json_response(self._view(batch))

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "No such batch")
        if batch.status in TERMINAL or batch.status == "cancelling":
            return _error(409, f"Cannot cancel a batch with status '{batch.status}'")
        self._enter(batch, "cancelling")
        return web.json_response(self._view(batch))

    def _ready(self, batch: FakeBatch) -> bool:
        settings = self.server.settings
        return (
            batch.state_polls >= settings.batch_polls_per_state and time.monotonic() - batch.state_since >= settings.batch_seconds_per_state
        )

    def _enter(self, batch: FakeBatch, status: str) -> None:
        batch.status, batch.state_polls, batch.state_since = status, 0, time.monotonic()
        batch.stamps[f"{status}_at"] = int(time.time())

    def _advance(self, batch: FakeBatch) -> None:
        """Move `batch` on by one state when it is due (see the module doc)."""
        settings = self.server.settings
        if batch.status in TERMINAL or not self._ready(batch):
            if batch.status == "in_progress":  # progress the counts while it runs
                share = min(1.0, batch.state_polls / max(1, settings.batch_polls_per_state))
                batch.counts["completed"] = int(share * len(batch.lines) * 0.9)
            return
        if batch.status == "validating":
            self._enter(batch, "failed" if batch.errors else "in_progress")
        elif batch.status == "in_progress":
            if settings.batch_outcome == "expired":
                self._run(batch, self._partial(batch))
                self._enter(batch, "expired")
            else:
                self._run(batch, len(batch.lines))
                self._enter(batch, "finalizing")
        elif batch.status == "finalizing":
            self._enter(batch, "completed")
        elif batch.status == "cancelling":
            self._run(batch, self._partial(batch))
            self._enter(batch, "cancelled")

    def _partial(self, batch: FakeBatch) -> int:
        partial = self.server.settings.batch_partial_lines
        return len(batch.lines) // 2 if partial is None else min(partial, len(batch.lines))

    def _run(self, batch: FakeBatch, processed: int) -> None:
        """Answer the first `processed` lines; write the output and error files (a file only when it has lines)."""
        outputs: list[str] = []
        errors: list[str] = []
        completed = failed = 0
        for number, line in enumerate(batch.lines):
            record_id = f"batch_req_{batch.id}_{number}"
            if number >= processed:
                if self.server.settings.batch_report_unfinished:
                    code = "batch_expired" if batch.status == "in_progress" else "batch_cancelled"
                    errors.append(
                        json.dumps(
                            {
                                "id": record_id,
                                "custom_id": line["custom_id"],
                                "response": None,
                                "error": {"code": code, "message": "This request could not be executed before the batch ended."},
                            }
                        )
                    )
                    failed += 1
                continue
            fault = self.server.choose_fault(line["body"])
            if fault:
                self.server.faults[fault] += 1
            status, payload, _ = self.server.answer(line["body"], fault)
            response = {"status_code": status, "request_id": f"req_{record_id}", "body": payload}
            text = json.dumps({"id": record_id, "custom_id": line["custom_id"], "response": response, "error": None})
            if fault in ("garbage", "truncated"):  # a broken line in the output file (half a line still names its request)
                outputs.append(text[: len(text) // 2] if fault == "truncated" else "<html>not json{")
                completed += 1
            elif status == 200:
                outputs.append(text)
                completed += 1
            else:
                errors.append(text)
                failed += 1
        if outputs:
            batch.output_file_id = self._new_file(("\n".join(outputs) + "\n").encode(), f"{batch.id}_output.jsonl", "batch_output")["id"]
        if errors:
            batch.error_file_id = self._new_file(("\n".join(errors) + "\n").encode(), f"{batch.id}_error.jsonl", "batch_output")["id"]
        batch.counts.update(completed=completed, failed=failed)

    def _view(self, batch: FakeBatch) -> dict[str, Any]:
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": batch.status,
            "created_at": batch.created_at,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "metadata": batch.metadata,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "request_counts": dict(batch.counts),
            **batch.stamps,
        }


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)
