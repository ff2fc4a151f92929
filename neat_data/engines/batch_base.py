"""The run of one `generate` call on an offline batch backend: attach, submit, wait, collect, answer.

In:  requests (each with an `id`), the journal of earlier batches, a state folder. Out: (index, RequestResult)
for each request whose batch finished; the rest are listed in `pending` (see neat_data.engines.base).

For each distinct request (custom_id + its exact line), newest journal record first:
- in a batch that is not finished, or finished but not yet downloaded → attach to it (never submit it again);
- in a downloaded batch with an ok answer → answer from the stored output file (no network);
- otherwise (never submitted, or its last answer was an error: the caller asks again only to retry it, e.g.
  --retry-errors after an expired batch) → a new batch file.
Every new record is saved before the first upload; every upload, create and change of state after it.
Subclasses (OpenAIBatchBackend, VLLMBatchBackend) implement `_submit`, `_refresh`, `_download`.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from neat_data.core.errors import NeatError
from neat_data.engines.base import Backend, GenerationRequest, RequestResult, Sampling
from neat_data.engines.batch_core import BatchLines, build_lines, line_digest, read_input_ids, read_outcomes, split_lines
from neat_data.engines.batch_journal import BatchJournal, BatchRecord, FileBatchJournal, load_records, save_records

POLL_FAILURES_BEFORE_GIVING_UP = 3  # consecutive failed status polls / downloads of one batch (each after the SDK's retries)


class ControlError(Exception):
    """A control call (upload, create, status, download, local run) failed; `reason` is redacted and short."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BatchBackendBase(Backend):
    name = "batch"

    def __init__(
        self,
        model: str,
        *,
        state_dir: Path,
        journal: BatchJournal | None,
        secret: str | None,
        max_requests: int,
        max_bytes: int,
        no_wait: bool,
        poll_interval: float,
        poll_max: float,
        progress: bool,
    ):
        self.model = model
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.journal = journal if journal is not None else FileBatchJournal(self.state_dir / "journal.json")
        self._secret = secret
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.no_wait = no_wait
        self.poll_interval, self.poll_max = poll_interval, poll_max
        self.progress = progress
        self.pending: dict[int, str] = {}
        self.stats: Counter[str] = Counter()
        self._records: list[BatchRecord] = []
        self._input_cache: dict[str, dict[str, bytes]] = {}
        self._outcome_cache: dict[str, dict[str, RequestResult]] = {}

    # ------------------------------------------------------------------------------------- subclass hooks
    base_url: str | None = None
    api_key_env: str | None = None

    def _body_model(self) -> str:
        return self.model

    def _merge_system(self) -> bool:
        return False

    def _submit(self, record: BatchRecord, fresh: bool) -> None:
        raise NotImplementedError

    def _refresh(self, record: BatchRecord) -> None:
        raise NotImplementedError

    def _download(self, record: BatchRecord) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- the journal
    def _save(self) -> None:
        for record in self._records:
            record.updated_at = time.time()
        save_records(self.journal, self._records)

    def _mine(self, record: BatchRecord) -> bool:
        """Records this backend can attach to: same backend, same server (another server cannot find the batch)."""
        return record.backend == self.name and record.base_url == self.base_url

    def _input_ids(self, record: BatchRecord) -> dict[str, bytes]:
        if record.name not in self._input_cache:
            path = self.state_dir / record.input_file
            if not path.exists():
                raise NeatError(
                    f"the batch journal names {record.label()} but its input file is missing; restore it (or remove "
                    "the record) — submitting its requests again could pay for them twice",
                    file=path,
                )
            self._input_cache[record.name] = read_input_ids(path)
        return self._input_cache[record.name]

    def _outcomes(self, record: BatchRecord) -> dict[str, RequestResult]:
        if record.name not in self._outcome_cache:
            self._outcome_cache[record.name] = read_outcomes(record, self.state_dir, self._input_ids(record), self._secret)
        return self._outcome_cache[record.name]

    def _new_record(self, lines: list[bytes]) -> BatchRecord:
        from neat_data.core.files import atomic_write_bytes

        data = b"\n".join(lines) + b"\n"
        digest = hashlib.sha256(data).hexdigest()
        name = f"b{len(self._records) + 1:05d}-{digest[:8]}"
        atomic_write_bytes(self.state_dir / f"{name}.input.jsonl", data)
        record = BatchRecord(
            name=name,
            backend=self.name,
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            input_file=f"{name}.input.jsonl",
            input_sha256=digest,
            requests=len(lines),
            bytes=len(data),
        )
        self._records.append(record)
        return record

    # ----------------------------------------------------------------------------------------- generate
    def generate(self, requests: Iterable[GenerationRequest], sampling: Sampling) -> Iterator[tuple[int, RequestResult]]:
        requests = list(requests)  # batch files are built from the whole list
        self.pending = {}
        batch = build_lines(requests, self._body_model(), sampling, merge_system=self._merge_system())
        self._records = load_records(self.journal)
        mine = [record for record in reversed(self._records) if self._mine(record)]  # newest first
        asked: dict[str, list[str]] = {}  # record name → custom_ids of this call it answers
        to_submit: list[str] = []
        for custom_id, line in batch.lines.items():
            digest = line_digest(line)
            record = next((r for r in mine if self._input_ids(r).get(custom_id) == digest), None)
            if record is None:
                to_submit.append(custom_id)
            elif not record.collected:
                asked.setdefault(record.name, []).append(custom_id)
                self.stats["batch_attached_requests"] += 1
            elif self._outcomes(record)[custom_id].error is None:
                self.stats["batch_reused_requests"] += 1
                yield from self._answer(batch, requests, custom_id, self._outcomes(record)[custom_id])
            else:
                to_submit.append(custom_id)
        by_name = {record.name: record for record in self._records}
        active = [by_name[name] for name in asked]
        files, too_large = split_lines([batch.lines[c] for c in to_submit], self.max_requests, self.max_bytes)
        fresh = []
        for lines in files:
            record = self._new_record(lines)
            asked[record.name] = list(self._input_ids(record))
            fresh.append(record)
        if fresh:
            self._save()  # every new batch file is on disk and journaled before the first upload
            self.stats["batch_submitted_requests"] += sum(record.requests for record in fresh)
        for line in too_large:
            custom_id = next(c for c in to_submit if batch.lines[c] is line)
            yield from self._answer(
                batch,
                requests,
                custom_id,
                RequestResult(error=f"request too large for a batch file ({len(line) + 1} bytes > batch_max_bytes {self.max_bytes})"),
            )
        for record in active + fresh:
            if record.status in ("prepared", "uploaded"):
                try:
                    self._submit(record, fresh=record in fresh)
                except ControlError as error:
                    record.last_error = error.reason
                    self._save()
                    for custom_id in asked.pop(record.name):
                        yield from self._answer(
                            batch, requests, custom_id, RequestResult(error=f"batch submission failed: {error.reason} ({record.name})")
                        )
                    continue
            if record not in active:
                active.append(record)
        yield from self._wait(active, asked, batch, requests)

    def _wait(
        self, active: list[BatchRecord], asked: dict[str, list[str]], batch: BatchLines, requests: list[GenerationRequest]
    ) -> Iterator[tuple[int, RequestResult]]:
        from tqdm.auto import tqdm

        failures: Counter[str] = Counter()
        delay = self.poll_interval
        watched = list(active)
        # the bar counts whole batches' requests as the server reports them (request_counts), not only this call's
        bar = tqdm(
            total=sum(record.requests for record in watched),
            unit="req",
            desc=f"{self.name}: {len(watched)} batches",
            disable=not self.progress or not watched or self.no_wait,
        )
        try:
            while active:
                for record in list(active):
                    try:
                        if not record.terminal:
                            before = (record.status, record.request_counts)
                            self._refresh(record)
                            if (record.status, record.request_counts) != before:
                                self._save()
                        if record.terminal and not record.collected:
                            self._download(record)
                            record.collected = True
                            self._save()
                        failures[record.name] = 0
                    except ControlError as error:
                        failures[record.name] += 1
                        record.last_error = error.reason
                        self._save()
                        if failures[record.name] >= POLL_FAILURES_BEFORE_GIVING_UP:
                            active.remove(record)  # left pending: the next run attaches to it again
                            self._leave_pending(record, asked, batch)
                        continue
                    if record.collected:
                        active.remove(record)
                        outcomes = self._outcomes(record)
                        for custom_id in asked.get(record.name, []):
                            yield from self._answer(batch, requests, custom_id, outcomes[custom_id])
                bar.n = sum(r.requests if r.collected else _finished_count(r) for r in watched)
                bar.refresh()
                if not active or self.no_wait:
                    break
                time.sleep(delay)
                delay = min(delay * 2, self.poll_max)
        finally:
            bar.close()
        for record in active:
            self._leave_pending(record, asked, batch)

    def _leave_pending(self, record: BatchRecord, asked: dict[str, list[str]], batch: BatchLines) -> None:
        for custom_id in asked.get(record.name, []):
            for index in batch.indices[custom_id]:
                self.pending[index] = record.label()

    def _answer(
        self, batch: BatchLines, requests: list[GenerationRequest], custom_id: str, result: RequestResult
    ) -> Iterator[tuple[int, RequestResult]]:
        for index in batch.indices[custom_id]:
            request = requests[index]
            mode = "none" if request.merged_messages is None else ("merged" if batch.sent_merged[custom_id] else "system")
            if result.error is not None:
                self.stats["failed_requests"] += 1
            yield index, replace(result, system_mode=mode)

    def close(self) -> None:
        pass


def _finished_count(record: BatchRecord) -> int:
    counts = record.request_counts or {}
    return min(record.requests, int(counts.get("completed", 0)) + int(counts.get("failed", 0)))
