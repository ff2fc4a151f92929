"""The generate stage end to end through the real stage code, with the recording backend."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from neat_data.core.errors import NeatError
from neat_data.core.keys import request_seed
from neat_data.core.pairs import choose_pair, load_libraries
from neat_data.core.runfolder import RunLock, ShardedTable
from neat_data.core.schemas import GENERATIONS
from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend


def make_config(prompts: Path, out: Path, **overrides) -> GenerateConfig:
    values = dict(
        prompts=str(prompts),
        model="fake-model",
        out=out,
        num_pos=2,
        num_neg=1,
        num_neutral=1,
        sampling=Sampling(max_tokens=8, seed=3),
        flush_every=3,
    )
    values.update(overrides)
    return GenerateConfig(**values)


def read_rows(out: Path) -> list[dict]:
    return pq.read_table(out / "generations").to_pylist()


def test_rows_per_steering_and_the_system_prompt_really_sent(prompts_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    backend = RecordingBackend()
    summary = run_generate(make_config(prompts_file, out), backend=backend, progress=False)
    rows = read_rows(out)
    assert summary.total_rows == len(rows) == 4 * (2 + 1 + 1)
    assert summary.counts["steering"] == {"pos": 8, "neg": 4, "none": 4}
    assert len({r["key"] for r in rows}) == len(rows)
    libraries = load_libraries(["harmless"])
    sent_by_seed = {seed: (messages, n) for messages, n, seed in backend.sent}
    for row in rows:
        pair = choose_pair(libraries, 3, row["prompt_id"])
        assert row["prompt"][0]["role"] == "user"  # the prompt column stays neutral
        messages, n = sent_by_seed[row["seed"]]
        if row["steering"] == "none":
            assert row["system_prompt"] is None and row["system_mode"] == "none"
            assert all(m["role"] != "system" for m in messages)
            assert row["seed"] == request_seed(3, row["prompt_id"], "none", None)
        else:
            expected = pair.positive if row["steering"] == "pos" else pair.negative
            assert row["system_prompt"] == expected and row["system_prompt_id"] == pair.id and row["pair_library"] == "harmless"
            assert messages[0] == {"role": "system", "content": expected} and row["system_mode"] == "system"
            assert messages[1:] == row["prompt"]
            assert row["seed"] == request_seed(3, row["prompt_id"], row["steering"], pair.id)
        assert n == {"pos": 2, "neg": 1, "none": 1}[row["steering"]]
        assert row["response"].startswith(f"sample {row['sample_index']} seed {row['seed']}:")
        assert json.loads(row["sampling"]) == {"max_tokens": 8, "seed": 3, "temperature": 0.8, "top_p": 0.95}
        assert row["status"] == "ok" and row["model"] == "fake-model" and row["backend"] == "fake"
    manifest = json.loads((out / "manifest.json").read_text())
    generate = manifest["stages"]["generate"]
    assert generate["finished"] and generate["rows"] == 16 and generate["config"]["num_pos"] == 2
    assert generate["pair_libraries"][0]["name"] == "harmless" and len(generate["pair_libraries"][0]["sha256_16"]) == 16
    assert len(list((out / "generations").glob("part-*.parquet"))) == 1  # compacted


def test_rerun_generates_nothing_and_crash_resume_loses_and_duplicates_nothing(prompts_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    config = make_config(prompts_file, out, flush_every=1)
    with pytest.raises(RuntimeError, match="scripted crash"):
        run_generate(config, backend=RecordingBackend(crash_after=5), progress=False)
    partial = ShardedTable(out / "generations", GENERATIONS).read()
    assert 0 < partial.num_rows < 16
    resumed = RecordingBackend()
    summary = run_generate(config, backend=resumed, progress=False)
    rows = read_rows(out)
    assert len(rows) == 16 and len({r["key"] for r in rows}) == 16
    assert summary.generated_rows == 16 - partial.num_rows
    assert len(resumed.sent) == 12 - 5  # 12 requests; the 5 answered before the crash were flushed (flush_every=1)
    again = RecordingBackend()
    run_generate(config, backend=again, progress=False)
    assert again.sent == [] and len(read_rows(out)) == 16


def test_failed_requests_become_error_rows_and_retry_errors_replaces_them(prompts_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    config = make_config(prompts_file, out)
    failing = RecordingBackend(fail_when=lambda messages: "boom: server said no" if "France" in messages[-1]["content"] else None)
    run_generate(config, backend=failing, progress=False)
    rows = read_rows(out)
    errors = [r for r in rows if r["status"] == "error"]
    assert len(rows) == 16 and len(errors) == 4
    assert all(r["error"] == "boom: server said no" and r["response"] is None for r in errors)
    untouched = RecordingBackend()
    run_generate(config, backend=untouched, progress=False)
    assert untouched.sent == []  # error rows count as done unless --retry-errors
    healthy = RecordingBackend()
    run_generate(config, backend=healthy, retry_errors=True, progress=False)
    assert len(healthy.sent) == 3  # the France prompt's pos, neg and none requests
    rows = read_rows(out)
    assert len(rows) == 16 and all(r["status"] == "ok" for r in rows)


def test_system_role_fallback_and_forced_merged_mode(prompts_file: Path, tmp_path: Path):
    backend = RecordingBackend(system_role_ok=False)
    run_generate(make_config(prompts_file, tmp_path / "a"), backend=backend, progress=False)
    rows = read_rows(tmp_path / "a")
    assert {r["system_mode"] for r in rows if r["steering"] != "none"} == {"merged"}
    assert all(m["role"] != "system" for messages, _, _ in backend.sent for m in messages)
    steered = [r for r in rows if r["steering"] == "pos"][0]
    sent = {seed: messages for messages, _, seed in backend.sent}[steered["seed"]]
    assert sent[0]["content"].startswith(steered["system_prompt"] + "\n\n")
    forced = RecordingBackend()
    run_generate(make_config(prompts_file, tmp_path / "b", system_mode="merged"), backend=forced, progress=False)
    assert {r["system_mode"] for r in read_rows(tmp_path / "b") if r["steering"] != "none"} == {"merged"}


def test_overwrite_and_refusing_a_folder_made_with_another_config(prompts_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    run_generate(make_config(prompts_file, out), backend=RecordingBackend(), progress=False)
    other = make_config(prompts_file, out, sampling=Sampling(max_tokens=8, seed=3, temperature=0.2))
    with pytest.raises(NeatError) as caught:
        run_generate(other, backend=RecordingBackend(), progress=False)
    assert caught.value.field == "sampling" and "--overwrite" in caught.value.message
    assert len(read_rows(out)) == 16  # nothing already written was touched
    backend = RecordingBackend()
    run_generate(other, backend=backend, overwrite=True, progress=False)
    rows = read_rows(out)
    assert len(rows) == 16 and len(backend.sent) == 12
    assert {json.loads(r["sampling"])["temperature"] for r in rows} == {0.2}


def test_more_samples_later_only_generates_the_new_ones(prompts_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    run_generate(make_config(prompts_file, out, num_pos=1, num_neg=1, num_neutral=0), backend=RecordingBackend(), progress=False)
    first = {r["key"]: r["response"] for r in read_rows(out)}
    run_generate(make_config(prompts_file, out, num_pos=2, num_neg=1, num_neutral=0), backend=RecordingBackend(), progress=False)
    rows = read_rows(out)
    assert len(rows) == 12 and all(first[k] == r["response"] for r in rows for k in [r["key"]] if k in first)


def test_second_writer_is_refused(tmp_path: Path):
    with RunLock(tmp_path):
        with pytest.raises(NeatError, match="in use by another"):
            with RunLock(tmp_path):
                pass


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_pos=0, num_neg=0, num_neutral=0), "at least 1"),
        (dict(num_pos=-1), "greater than or equal"),
        (dict(backend="openai"), "base_url"),
    ],
)
def test_bad_counts_and_options_rejected(prompts_file: Path, tmp_path: Path, overrides, message):
    with pytest.raises(Exception, match=message):
        make_config(prompts_file, tmp_path, **overrides)


def test_bad_sampling_values_rejected():
    for bad in (dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(max_tokens=0)):
        with pytest.raises(ValidationError):
            Sampling(**bad)


def test_editing_a_pair_text_regenerates_its_rows(prompts_file: Path, tmp_path: Path):
    library = tmp_path / "mine.yaml"
    library.write_text("name: mine\npairs:\n  - {id: m-1, positive: Be good., negative: Be bad.}\n")
    out = tmp_path / "run"
    config = make_config(prompts_file, out, pairs=[str(library)], num_neutral=0)
    run_generate(config, backend=RecordingBackend(), progress=False)
    library.write_text("name: mine\npairs:\n  - {id: m-1, positive: Be very good., negative: Be bad.}\n")
    backend = RecordingBackend()
    summary = run_generate(config, backend=backend, progress=False)
    assert len(backend.sent) == 4 and all(messages[0]["content"] == "Be very good." for messages, _, _ in backend.sent)
    assert summary.stale_rows == 8  # the old positive rows are kept, and counted
    rows = read_rows(out)
    current = [r for r in rows if r["system_prompt"] in ("Be very good.", "Be bad.")]
    assert len(current) == 12


def test_engine_calls_count_each_sample_of_a_request_against_the_step_budget():
    from neat_data.engines.vllm_backend import pack_calls, step_tokens

    # a request's n samples are n sequences, and a prompt shorter than a KV block shares none of its prefill between
    # them: 100 requests of 120 tokens × 2 samples are 24000 tokens to prefill, two calls (counted once, one call held all)
    calls = list(pack_calls([(i, step_tokens(120, 2)) for i in range(100)], budget=16384, max_requests=512))
    assert [len(call) for call in calls] == [68, 32] and [i for call in calls for i in call] == list(range(100))
    assert list(pack_calls([(i, step_tokens(10, 3)) for i in range(5)], budget=16384, max_requests=2)) == [[0, 1], [2, 3], [4]]
    assert list(pack_calls([("alone", step_tokens(9000, 2)), ("next", 1)], budget=16384, max_requests=512)) == [["alone"], ["next"]]
