"""Backend `openai-batch`: the OpenAI Batch API (half the price of online requests, results within 24 h).

In:  requests (each with an `id`: the generate stage gives the content key of its first sample row), a state
     folder and a journal (neat_data.engines.batch_journal); the key from the variable `api_key_env` names.
Out: (index, RequestResult) per request whose batch finished; the others in `backend.pending` (`no_wait`, or a
     batch whose status could not be read) — the next run attaches to their batches, never submits them again.

How: the requests become JSONL lines (neat_data.engines.batch_core: custom_id = the request's id, body = exactly
the online backend's body), split under 50,000 requests / 200 MB per file; each file is written to the state
folder and journaled, uploaded (`files.create(purpose="batch")`, journaled), submitted (`batches.create`,
endpoint /v1/chat/completions, window 24h, journaled), then polled with doubling intervals and a progress bar
from `request_counts`; the output and error files are downloaded into the state folder and mapped back to the
requests. A kill at any point is recovered by the next run: a file written but maybe uploaded is looked up by
its name in `files.list`, a file uploaded but maybe submitted is looked up in `batches.list`.

Batch-mode decisions:
- system role: the messages go as they are (system role). There is no second round trip in which to retry
  merged; a request the server refuses for its system role becomes an error row whose reason says to re-run with
  `--system-mode merged` (which sends the merged messages from the start). The OpenAI API accepts the role.
- fewer choices than n: the completions that came back are the result; the generate stage turns the missing
  samples into error rows ("engine returned k of n samples"); there are no separate n=1 requests in batch mode.
- an expired or cancelled batch: its finished requests are answered; the others are error rows ("batch expired
  before this request ran (batch …)"), which `--retry-errors` submits again in a new batch.
- control calls (upload, create, status, download) use the SDK's own retries (`max_retries`, Retry-After).

Status and cancel for `neat-data batch status|cancel RUN`: `refresh_records`, `cancel_records`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.errors import redact_secret, register_secret_env
from neat_data.engines.base import narrow
from neat_data.engines.batch_base import BatchBackendBase, ControlError
from neat_data.engines.batch_core import ENDPOINT, MAX_BYTES_PER_FILE, MAX_REQUESTS_PER_FILE
from neat_data.engines.batch_journal import BatchJournal, BatchRecord
from neat_data.engines.openai_backend import OpenAIOptions

OPENAI_BASE_URL = "https://api.openai.com/v1"
UPLOAD_TIMEOUT = 600.0  # seconds: a 200 MB file takes a while
LOOKUP_WINDOW = 600.0  # seconds: how far before a record's creation a lost upload / batch is looked for in the lists
T = TypeVar("T")


class OpenAIBatchOptions(BaseModel):
    """Options of the offline batch backends openai-batch and vllm-batch (vllm-batch uses only the request limits)."""

    model_config = ConfigDict(extra="forbid")

    no_wait: bool = Field(
        False,
        description="openai-batch: submit (or attach to) the batches and return; a later run collects them.",
        json_schema_extra={"cli_false": "--wait"},
    )
    batch_max_requests: int = Field(
        MAX_REQUESTS_PER_FILE,
        ge=1,
        le=MAX_REQUESTS_PER_FILE,
        description="openai-batch/vllm-batch: requests per batch file (API limit 50,000).",
    )
    batch_max_bytes: int = Field(
        MAX_BYTES_PER_FILE, ge=1024, le=MAX_BYTES_PER_FILE, description="openai-batch/vllm-batch: bytes per batch file (API limit 200 MB)."
    )
    batch_poll_interval: float = Field(10.0, gt=0, description="openai-batch: seconds between status polls at first; doubles each poll.")
    batch_poll_max: float = Field(300.0, gt=0, description="openai-batch: longest wait between status polls, in seconds.")


class OpenAIBatchBackend(BatchBackendBase):
    name = "openai-batch"

    def __init__(
        self,
        model: str,
        options: OpenAIOptions,
        batch_options: OpenAIBatchOptions,
        *,
        state_dir: Path,
        journal: BatchJournal | None = None,
        api_key: str | None = None,
        progress: bool = True,
    ):
        super().__init__(
            model,
            state_dir=state_dir,
            journal=journal,
            secret=api_key,
            max_requests=batch_options.batch_max_requests,
            max_bytes=batch_options.batch_max_bytes,
            no_wait=batch_options.no_wait,
            poll_interval=batch_options.batch_poll_interval,
            poll_max=batch_options.batch_poll_max,
            progress=progress,
        )
        self.base_url = options.base_url or OPENAI_BASE_URL
        self.api_key_env = options.api_key_env
        self._client = make_client(self.base_url, api_key, max_retries=options.max_retries, timeout=options.request_timeout)

    def __repr__(self) -> str:  # no key in reprs, tracebacks or logs
        return f"OpenAIBatchBackend(base_url={self.base_url!r}, model={self.model!r}, state_dir={str(self.state_dir)!r})"

    @classmethod
    def from_options(
        cls, model: str, options: Any, *, state_dir: Path, journal: BatchJournal | None = None, progress: bool = True, **_: Any
    ) -> OpenAIBatchBackend:
        """`options`: any model holding OpenAIOptions' and OpenAIBatchOptions' fields (a generate or score config).
        The key comes from the environment, here and nowhere else."""
        plain, batch = narrow(options, OpenAIOptions), narrow(options, OpenAIBatchOptions)
        register_secret_env(plain.api_key_env)
        return cls(model, plain, batch, state_dir=state_dir, journal=journal, api_key=os.environ.get(plain.api_key_env), progress=progress)

    def _call(self, what: str, function: Callable[[], T]) -> T:
        return control_call(what, function, self._secret)

    def _submit(self, record: BatchRecord, fresh: bool) -> None:
        upload_name = f"neat-{record.name}.jsonl"
        if record.input_file_id is None:
            found = None if fresh else self._call("list files", lambda: _find_upload(self._client, upload_name, record))
            if found is None:
                data = (self.state_dir / record.input_file).read_bytes()
                uploaded = self._call(
                    "upload",
                    lambda: self._client.files.create(
                        file=(upload_name, data, "application/jsonl"), purpose="batch", timeout=UPLOAD_TIMEOUT
                    ),
                )
                found = uploaded.id
            record.input_file_id, record.status = found, "uploaded"
            self._save()
        if record.batch_id is None:
            existing = None if fresh else self._call("list batches", lambda: _find_batch(self._client, record))
            if existing is None:
                existing = self._call(
                    "create batch",
                    lambda: self._client.batches.create(
                        input_file_id=record.input_file_id,
                        endpoint=ENDPOINT,
                        completion_window="24h",
                        metadata={"neat_data_batch": record.name},
                    ),
                )
                self.stats["batches_submitted"] += 1
            apply_batch(record, existing)
            self._save()

    def _refresh(self, record: BatchRecord) -> None:
        apply_batch(record, self._call("status", lambda: self._client.batches.retrieve(record.batch_id)))

    def _download(self, record: BatchRecord) -> None:
        from neat_data.core.files import atomic_write_bytes

        for file_id, suffix in ((record.output_file_id, "output"), (record.error_file_id, "errors")):
            if file_id:
                content: bytes = self._call(f"download {suffix} file", functools.partial(_file_bytes, self._client, file_id))
                atomic_write_bytes(self.state_dir / f"{record.name}.{suffix}.jsonl", content)

    def close(self) -> None:
        self._client.close()


def make_client(base_url: str, api_key: str | None, *, max_retries: int, timeout: float) -> Any:
    """The SDK's synchronous client for control calls (they are few: its retries and typed objects are worth it)."""
    import httpx2
    import openai

    from neat_data.engines.openai_http import CONNECT_TIMEOUT

    return openai.OpenAI(
        base_url=base_url,
        api_key=api_key or "EMPTY",
        max_retries=max_retries,
        timeout=httpx2.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
    )


def control_call(what: str, function: Callable[[], T], secret: str | None) -> T:
    """`function()`, its failures as ControlError("<what>: <reason>") with the key redacted before the cut."""
    import openai

    from neat_data.engines.batch_core import short_text
    from neat_data.engines.openai_http import classify_transport_error

    try:
        return function()
    except openai.APIStatusError as error:
        reason = f"HTTP {error.status_code}: {error.message}"
    except (openai.APITimeoutError, openai.APIConnectionError) as error:
        reason = classify_transport_error(error, 0.0)[1]
    except openai.OpenAIError as error:
        reason = f"{type(error).__name__}: {error}"
    raise ControlError(short_text(redact_secret(f"{what}: {reason}", secret)))


def apply_batch(record: BatchRecord, batch: Any) -> None:
    """Copy what the server says of a batch (an SDK Batch object) into its record."""
    record.batch_id = batch.id
    record.status = batch.status
    record.output_file_id = batch.output_file_id
    record.error_file_id = batch.error_file_id
    counts = batch.request_counts
    record.request_counts = {"total": counts.total, "completed": counts.completed, "failed": counts.failed} if counts else None
    errors = (batch.errors.data if batch.errors else None) or []
    record.errors = [f"{e.code or 'error'}: {e.message or ''}" + (f" (line {e.line})" if e.line else "") for e in errors]


def _file_bytes(client: Any, file_id: str) -> bytes:
    return client.files.content(file_id).content


def _find_upload(client: Any, upload_name: str, record: BatchRecord) -> str | None:
    """The id of a file this record uploaded before a kill (same name and size), if the server lists one."""
    for file in client.files.list(purpose="batch"):
        if file.filename == upload_name and file.bytes == record.bytes:
            return file.id
        if file.created_at < record.created_at - LOOKUP_WINDOW:
            break
    return None


def _find_batch(client: Any, record: BatchRecord) -> Any:
    """A batch created from this record's file before a kill, if the server lists one."""
    for batch in client.batches.list(limit=100):
        if batch.input_file_id == record.input_file_id:
            return batch
        if batch.created_at < record.created_at - LOOKUP_WINDOW:
            break
    return None


# ------------------------------------------------------------------------- neat-data batch status | cancel
def refresh_records(
    records: list[BatchRecord], *, api_key_for: Callable[[BatchRecord], str | None]
) -> list[tuple[BatchRecord, str | None]]:
    """(record updated from its server, the problem if it could not be read) for every openai-batch record with a
    batch id; other records are returned as they are. Nothing is written: a running stage owns the journal."""
    out: list[tuple[BatchRecord, str | None]] = []
    for record in records:
        record = record.model_copy(deep=True)
        if record.backend != OpenAIBatchBackend.name or not record.batch_id or record.terminal:
            out.append((record, None))
            continue
        key = api_key_for(record)
        client = make_client(record.base_url or OPENAI_BASE_URL, key, max_retries=2, timeout=60.0)
        try:
            apply_batch(record, control_call("status", functools.partial(client.batches.retrieve, record.batch_id), key))
            out.append((record, None))
        except ControlError as error:
            out.append((record, error.reason))
        finally:
            client.close()
    return out


def cancel_records(records: list[BatchRecord], *, api_key_for: Callable[[BatchRecord], str | None]) -> list[tuple[BatchRecord, str]]:
    """Ask the server to cancel every unfinished openai-batch batch: (record, what happened) for each one tried.
    A cancelled batch keeps the requests it finished; the next run of the stage collects them and turns the rest
    into error rows (`--retry-errors` submits those again)."""
    out: list[tuple[BatchRecord, str]] = []
    for record in records:
        if record.backend != OpenAIBatchBackend.name or not record.batch_id or record.terminal:
            continue
        key = api_key_for(record)
        client = make_client(record.base_url or OPENAI_BASE_URL, key, max_retries=2, timeout=60.0)
        try:
            batch = control_call("cancel", functools.partial(client.batches.cancel, record.batch_id), key)
            out.append((record, f"now {batch.status}"))
        except ControlError as error:
            out.append((record, f"not cancelled: {error.reason}"))
        finally:
            client.close()
    return out
