"""openai-batch against the fake server's Files and Batch APIs: the file format and its limits, the journal, the
states a batch walks through, error/malformed/failed/expired/cancelled batches, --no-wait, status and cancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from neat_data.engines.base import GenerationRequest, Sampling
from neat_data.engines.batch_core import build_lines, split_lines
from neat_data.engines.batch_journal import FileBatchJournal, ManifestBatchJournal, load_records, state_dir_for
from neat_data.engines.openai_backend import OpenAIBackend, OpenAIOptions
from neat_data.engines.openai_batch import OpenAIBatchBackend, OpenAIBatchOptions

SAMPLING = Sampling(temperature=0.7, top_p=0.9, max_tokens=8, seed=0)


def request(i: int, text: str | None = None, n: int = 2) -> GenerationRequest:
    user = [{"role": "user", "content": text or f"question {i}"}]
    return GenerationRequest(
        messages=[{"role": "system", "content": "Be kind."}, *user],
        merged_messages=[{"role": "user", "content": f"Be kind.\n\n{user[0]['content']}"}],
        n=n,
        seed=100 + i,
        id=f"key-{i:05d}",
    )


def batch_backend(server, state: Path, *, api_key: str | None = None, journal=None, **batch_options) -> OpenAIBatchBackend:
    options = dict(batch_poll_interval=0.01, batch_poll_max=0.05)
    options.update(batch_options)
    return OpenAIBatchBackend(
        "fake",
        OpenAIOptions(base_url=server.url, max_retries=1),
        OpenAIBatchOptions(**options),
        state_dir=state,
        journal=journal,
        api_key=api_key,
        progress=False,
    )


def texts(results: dict) -> dict[int, list[str]]:
    return {i: [c.text for c in r.completions] for i, r in results.items()}


def expected(req: GenerationRequest) -> list[str]:
    return [f"reply {req.seed + s}: {req.messages[-1]['content']}" for s in range(req.n)]


def test_a_batch_line_carries_exactly_the_online_request(fake_server, tmp_path: Path):
    server = fake_server()
    req = request(1)
    dict(OpenAIBackend("fake", OpenAIOptions(base_url=server.url)).generate([req], SAMPLING))
    backend = batch_backend(server, tmp_path / "state")
    results = dict(backend.generate([req], SAMPLING))
    line = json.loads(next((tmp_path / "state").glob("*.input.jsonl")).read_text())
    assert line == {"custom_id": "key-00001", "method": "POST", "url": "/v1/chat/completions", "body": server.requests[0]}
    uploaded = next(f for f in server.batch_api.files.values() if f["purpose"] == "batch")
    assert uploaded["content"] == next((tmp_path / "state").glob("*.input.jsonl")).read_bytes()  # the bytes journaled = the bytes sent
    assert texts(results) == {0: expected(req)} and results[0].system_mode == "system"
    assert results[0].prompt_tokens == 4 and results[0].completion_tokens == 10  # the body's usage: 4 words, 5 per choice


def test_files_are_split_under_the_request_and_byte_limits(fake_server, tmp_path: Path):
    lines = [b"x" * 99] * 7  # 100 bytes each with its newline
    files, too_large = split_lines(lines + [b"y" * 400], max_requests=3, max_bytes=250)
    assert [len(f) for f in files] == [2, 2, 2, 1] and too_large == [b"y" * 400]  # 250 bytes hold two lines
    files, _ = split_lines(lines, max_requests=3, max_bytes=10_000)
    assert [len(f) for f in files] == [3, 3, 1]

    server = fake_server()
    requests = [request(i) for i in range(10)] + [request(99, "long " * 400)]
    backend = batch_backend(server, tmp_path / "state", batch_max_requests=4, batch_max_bytes=1024)
    results = dict(backend.generate(requests, SAMPLING))
    inputs = sorted((tmp_path / "state").glob("*.input.jsonl"))
    assert all(len(p.read_bytes()) <= 1024 and len(p.read_bytes().splitlines()) <= 4 for p in inputs)
    assert sum(len(p.read_bytes().splitlines()) for p in inputs) == 10 and len(server.batch_api.batches) == len(inputs)
    assert all(texts(results)[i] == expected(requests[i]) for i in range(10))
    assert results[10].error.startswith("request too large for a batch file") and "batch_max_bytes 1024" in results[10].error


def test_states_progress_and_the_journal_written_before_waiting(fake_server, tmp_path: Path):
    server = fake_server(batch_polls_per_state=3)
    journal = FileBatchJournal(tmp_path / "journal.json")
    seen: list[list[dict]] = []

    class WatchingJournal:  # the real file journal, plus a copy of each saved state for the assertions
        def load(self):
            return journal.load()

        def save(self, records):
            seen.append(json.loads(json.dumps(records)))
            journal.save(records)

    requests = [request(i) for i in range(6)]
    backend = batch_backend(server, tmp_path / "state", journal=WatchingJournal(), batch_max_requests=3)
    results = dict(backend.generate(requests, SAMPLING))
    assert texts(results) == {i: expected(r) for i, r in enumerate(requests)}
    # every batch id was saved before the first status poll: the first save with both ids precedes any in_progress
    first_with_ids = next(i for i, records in enumerate(seen) if all(r["batch_id"] for r in records) and len(records) == 2)
    assert all(r["status"] == "validating" for r in seen[first_with_ids])
    assert seen[0][0]["status"] == "prepared" and seen[0][0]["batch_id"] is None  # journaled before the upload
    statuses = [s for records in seen for s in [records[0]["status"]]]
    assert [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]] == [
        "prepared",
        "uploaded",
        "validating",
        "in_progress",
        "finalizing",
        "completed",
    ]
    assert any(0 < (records[0]["request_counts"] or {}).get("completed", 0) < 3 for records in seen)  # counts moved while running
    final = load_records(journal)
    assert [r.status for r in final] == ["completed", "completed"] and all(r.collected for r in final)


def test_error_lines_malformed_lines_and_fewer_choices(fake_server, tmp_path: Path):
    server = fake_server()
    faults = ["500", "400", "garbage", "truncated", "fewer", "empty"]
    requests = [request(i, f"[[fault:{fault}]] q{i}") for i, fault in enumerate(faults)] + [request(9)]
    results = dict(batch_backend(server, tmp_path / "state").generate(requests, SAMPLING))
    batch_id = next(iter(server.batch_api.batches))
    assert results[0].error == f"HTTP 500: internal error (batch {batch_id})"
    assert results[1].error == f"HTTP 400: bad request: unsupported parameter (batch {batch_id})"
    # a line that is not JSON at all names no request: that request is missing, and the count says why
    assert results[2].error == f"missing from batch output (batch {batch_id} completed, 1 malformed or unknown lines)"
    assert results[3].error == f"malformed output line: not JSON (batch {batch_id})"  # half a line still names its custom_id
    assert results[4].error is None and len(results[4].completions) == 1  # the stage makes the missing sample an error row
    assert results[5].error is None and results[5].completions[0].text is None  # → "engine returned no text" row
    assert texts(results)[6] == expected(requests[6])


def test_a_server_rejecting_the_system_role_says_how_to_fix_it(fake_server, tmp_path: Path):
    server = fake_server(reject_system=True)
    results = dict(batch_backend(server, tmp_path / "state").generate([request(1)], SAMPLING))
    assert results[0].error.startswith(
        "HTTP 400: System role not supported; the server rejects the system role: re-run with --system-mode merged"
    )


def test_a_failed_batch_makes_error_rows_and_asking_again_submits_again(fake_server, tmp_path: Path):
    server = fake_server(batch_outcome="failed")
    requests = [request(i) for i in range(3)]
    results = dict(batch_backend(server, tmp_path / "state").generate(requests, SAMPLING))
    assert all(
        r.error.startswith("batch failed: invalid_model: The model does not support the batch API (batch batch_") for r in results.values()
    )
    server.settings.batch_outcome = "completed"
    again = dict(batch_backend(server, tmp_path / "state").generate(requests, SAMPLING))
    assert texts(again) == {i: expected(r) for i, r in enumerate(requests)}
    assert len(server.batch_api.batches) == 2 and set(server.batch_api.batch_submissions.values()) == {1}


@pytest.mark.parametrize("report_unfinished", [False, True])
def test_an_expired_batch_keeps_its_partial_output_and_retries_only_the_rest(fake_server, tmp_path: Path, report_unfinished):
    server = fake_server(batch_outcome="expired", batch_partial_lines=2, batch_report_unfinished=report_unfinished)
    requests = [request(i) for i in range(5)]
    results = dict(batch_backend(server, tmp_path / "state").generate(requests, SAMPLING))
    assert [i for i, r in results.items() if r.error is None] == [0, 1]
    first = next(iter(server.batch_api.batches))
    reason = (
        f"batch_expired: This request could not be executed before the batch ended. (batch {first})"
        if report_unfinished
        else f"batch expired before this request ran (batch {first})"
    )
    assert [results[i].error for i in (2, 3, 4)] == [reason] * 3
    server.settings.batch_outcome = "completed"
    again = batch_backend(server, tmp_path / "state")  # what --retry-errors does: the stage asks for the error rows again
    replay = dict(again.generate(requests, SAMPLING))
    assert texts(replay) == {i: expected(r) for i, r in enumerate(requests)}
    assert again.stats["batch_reused_requests"] == 2 and again.stats["batch_submitted_requests"] == 3
    counts = server.batch_api.submitted_custom_ids
    assert [counts[r.id] for r in requests] == [1, 1, 2, 2, 2]  # the two finished requests were never paid for twice


def test_no_wait_then_status_cancel_and_collect(fake_server, tmp_path: Path, monkeypatch):
    from neat_data.cli import cli

    monkeypatch.setenv("BATCH_TEST_KEY", "sk-test-" + "k" * 30)
    server = fake_server(batch_polls_per_state=1000)  # stays validating until cancelled
    run = tmp_path / "run"
    state = state_dir_for(run, "generate")
    journal = ManifestBatchJournal(run, "generate")
    requests = [request(i) for i in range(6)]
    backend = OpenAIBatchBackend(
        "fake",
        OpenAIOptions(base_url=server.url, api_key_env="BATCH_TEST_KEY"),
        OpenAIBatchOptions(no_wait=True, batch_max_requests=3),
        state_dir=state,
        journal=journal,
        api_key="sk-test-" + "k" * 30,
        progress=False,
    )
    assert list(backend.generate(requests, SAMPLING)) == []  # nothing finished: nothing yielded …
    assert sorted(backend.pending) == list(range(6)) and all(v.endswith(" validating") for v in backend.pending.values())
    manifest = json.loads((run / "manifest.json").read_text())  # … and the batch ids are in the run's manifest
    assert [r["batch_id"] for r in manifest["batches"]["generate"]] == list(server.batch_api.batches)
    assert "sk-test" not in (run / "manifest.json").read_text()

    runner = CliRunner()
    status = runner.invoke(cli, ["batch", "status", str(run)])
    assert status.exit_code == 0, status.output
    assert status.output.count(" validating  0/3 done, 0 failed") == 2 and "2 batches: 2 validating" in status.output
    cancel = runner.invoke(cli, ["batch", "cancel", str(run)])
    assert cancel.exit_code == 0 and cancel.output.count("now cancelling") == 2 and "2 unfinished batches asked to cancel" in cancel.output
    assert f"Bearer sk-test-{'k' * 30}" in server.authorizations  # the CLI used the key the batches were submitted with

    # the next run (waiting) attaches, sees them cancelled (with half their requests done) and collects
    server.settings.batch_polls_per_state = 1
    later = OpenAIBatchBackend(
        "fake",
        OpenAIOptions(base_url=server.url),
        OpenAIBatchOptions(batch_poll_interval=0.01),
        state_dir=state,
        journal=journal,
        progress=False,
    )
    results = dict(later.generate(requests, SAMPLING))
    assert later.stats["batch_attached_requests"] == 6 and later.stats["batch_submitted_requests"] == 0
    ok = sorted(i for i, r in results.items() if r.error is None)
    assert ok == [0, 3]  # the first line of each 3-line file ran before the cancel (half, rounded down)
    assert all("batch cancelled before this request ran" in results[i].error for i in (1, 2, 4, 5))
    assert set(server.batch_api.batch_submissions.values()) == {1}
    assert runner.invoke(cli, ["batch", "cancel", str(run)]).output.strip() == "no unfinished batch to cancel"


def test_the_key_is_redacted_from_submission_errors_and_never_stored(fake_server, tmp_path: Path):
    key = "sk-" + "q" * 40
    server = fake_server(require_key="sk-the-right-one", error_padding=200)  # the echoed key falls across the 300-char cut
    backend = batch_backend(server, tmp_path / "state", api_key=key)
    results = dict(backend.generate([request(1), request(2)], SAMPLING))
    assert all(r.error.startswith("batch submission failed: upload: HTTP 401: Error code: 401 - xxxx") for r in results.values())
    assert all("***" in r.error and "q" * 16 not in r.error for r in results.values())
    assert not [p for p in (tmp_path / "state").iterdir() if b"q" * 16 in p.read_bytes()]
    records = load_records(FileBatchJournal(tmp_path / "state" / "journal.json"))
    assert records[0].status == "prepared" and "***" in records[0].last_error
    # with the right key the next run uploads the same journaled file: nothing is written twice
    server.settings.require_key = key
    again = dict(batch_backend(server, tmp_path / "state", api_key=key).generate([request(1), request(2)], SAMPLING))
    assert all(r.error is None for r in again.values()) and len(load_records(FileBatchJournal(tmp_path / "state" / "journal.json"))) == 1


def test_identical_requests_share_one_line_and_ids_must_not_clash():
    same = [request(1), request(1)]
    lines = build_lines(same, "m", SAMPLING)
    assert list(lines.lines) == ["key-00001"] and lines.indices == {"key-00001": [0, 1]}
    clash = [
        request(1),
        GenerationRequest(messages=[{"role": "user", "content": "other"}], merged_messages=None, n=1, seed=1, id="key-00001"),
    ]
    with pytest.raises(ValueError, match="share the id"):
        build_lines(clash, "m", SAMPLING)
    no_id = GenerationRequest(messages=[{"role": "user", "content": "hi"}], merged_messages=None, n=1, seed=1)
    derived = list(build_lines([no_id, no_id], "m", SAMPLING).lines)
    assert len(derived) == 1 and derived[0].startswith("req-")  # a judge's requests: the id comes from the body


def test_the_judge_scores_through_openai_batch(fake_server, tmp_path: Path):
    from neat_data.scorers import ScorerOptions, make_scorer
    from neat_data.scorers.base import ScoreItem

    server = fake_server(fixed_reply="Rating: 7")
    options = ScorerOptions(scorer="judge", judge_backend="openai-batch", base_url=server.url, batch_poll_interval=0.01)
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    items = [ScoreItem(prompt, "Seven minutes.", "pos", None, None), ScoreItem(prompt, "Go away.", "neg", None, None)]
    with pytest.raises(ValueError, match="state folder"):
        make_scorer(options, "judge-model")
    scorer = make_scorer(options, "judge-model", state_dir=tmp_path / "batches" / "score")
    assert [r.score for r in scorer.score(items)] == [7.0, 7.0]
    assert len(server.batch_api.batches) == 1 and server.requests == []  # one batch, no online request
    # judging the same items again answers from the stored output
    again = make_scorer(options, "judge-model", state_dir=tmp_path / "batches" / "score")
    assert [r.score for r in again.score(items)] == [7.0, 7.0] and len(server.batch_api.batches) == 1


def test_a_server_that_stops_answering_leaves_the_requests_pending_not_failed(fake_server, tmp_path: Path):
    server = fake_server(batch_polls_per_state=1000)
    requests = [request(i) for i in range(3)]
    submitted = batch_backend(server, tmp_path / "state", no_wait=True)
    assert list(submitted.generate(requests, SAMPLING)) == [] and len(submitted.pending) == 3
    server.stop()  # the batch is still on the (now unreachable) server
    waiting = OpenAIBatchBackend(
        "fake",
        OpenAIOptions(base_url=server.url, max_retries=0),
        OpenAIBatchOptions(batch_poll_interval=0.01, batch_poll_max=0.01),
        state_dir=tmp_path / "state",
        progress=False,
    )
    assert list(waiting.generate(requests, SAMPLING)) == []  # no error rows: the batch may still finish
    assert sorted(waiting.pending) == [0, 1, 2] and waiting.stats["batch_submitted_requests"] == 0
    record = load_records(FileBatchJournal(tmp_path / "state" / "journal.json"))[0]
    assert record.status == "validating" and record.last_error.startswith("status: connection refused")
