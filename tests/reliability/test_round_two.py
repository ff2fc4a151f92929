"""Reliability, round two (issue 10): data that was lost or silently stale, outcomes that misled, secrets in printed
lines, and the features a real dataset needs. Each test failed before its fix; the bad-input kinds of the same issue
are in test_bad_input.py."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import yaml
from click.testing import CliRunner
from conftest import write_jsonl

from neat_data.cli import cli
from neat_data.core.runfolder import ShardedTable
from neat_data.core.schemas import SCORED
from neat_data.engines.base import Sampling
from neat_data.rounds.recipe import load_recipe
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

PROMPTS = [{"prompt": "How do I boil an egg?"}, {"prompt": "Name a prime."}, {"prompt": "What is rain?"}]


def invoke(*args: str, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def generated(folder: Path, backend: RecordingBackend, **changes) -> Path:
    config = GenerateConfig(
        prompts=str(write_jsonl(folder / "p.jsonl", PROMPTS)),
        model="fake",
        out=folder / "run",
        num_pos=2,
        num_neg=1,
        sampling=Sampling(max_tokens=8),
        **changes,
    )
    run_generate(config, backend=backend, progress=False, retry_errors=True)
    return folder / "run"


def test_rows_retried_after_scoring_are_scored_again_and_reach_rank(tmp_path: Path):
    """Before: `generate --retry-errors` kept the row's key, `score` resumed by key and skipped it, so the row that is
    now ok was never scored and silently left out of rank."""
    run = generated(
        tmp_path, RecordingBackend(fail_when=lambda messages: "HTTP 500: flaky" if "prime" in messages[-1]["content"] else None)
    )
    scored = invoke("score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress")
    assert scored.exit_code == 0, scored.output
    before = {r["key"]: r for r in ShardedTable(run / "scored", SCORED).read().to_pylist()}
    assert sum(r["score_status"] == "skipped" for r in before.values()) == 3
    generated(tmp_path, RecordingBackend())  # --retry-errors: the 3 error rows are ok now, same keys
    rescored = invoke("score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress")
    assert "(3 newly scored)" in rescored.output, rescored.output
    after = ShardedTable(run / "scored", SCORED).read().to_pylist()
    assert len(after) == 9 and all(r["score_status"] == "ok" and r["score"] == len(r["response"]) for r in after)
    ranked = invoke("rank", str(run))
    assert "prompts 3, candidates 9" in ranked.output, ranked.output


def test_scores_of_rows_no_generation_holds_any_more_are_dropped(tmp_path: Path):
    """generate --overwrite with other pairs leaves old scored rows behind; rank must not see them."""
    run = generated(tmp_path, RecordingBackend())
    assert invoke("score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress").exit_code == 0
    config = GenerateConfig(
        prompts=str(tmp_path / "p.jsonl"), model="fake", out=run, num_pos=1, num_neg=1, pairs=["helpful"], sampling=Sampling(max_tokens=8)
    )
    run_generate(config, backend=RecordingBackend(), overwrite=True, progress=False)
    assert invoke("score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress").exit_code == 0
    keys = {r["key"] for r in pq.read_table(run / "generations").to_pylist()}
    assert {r["key"] for r in ShardedTable(run / "scored", SCORED).read().to_pylist()} == keys


def test_a_failing_user_scorer_is_one_scrubbed_line(tmp_path: Path, monkeypatch):
    """Before: a traceback, with the value of a secret environment variable in it."""
    secret = "sk-live-0123456789abcdefghij"
    monkeypatch.setenv("SCORER_API_KEY", secret)
    run = generated(tmp_path, RecordingBackend())
    result = invoke("score", str(run), "--scorer", "python:reliability_scorers:leaks_its_key", "--no-progress")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "the scorer raised PermissionError" in lines[0] and "***" in lines[0] and secret not in result.output
    assert "Traceback" not in result.output


def test_an_unexpected_error_is_one_scrubbed_line_and_exit_1(tmp_path: Path, monkeypatch):
    """Anything the code does not expect (here: a scorer's module that fails at import with a secret in the message)
    is still one line, scrubbed; NEAT_DATA_DEBUG=1 shows the traceback, scrubbed too."""
    secret = "tok-abcdefghijklmnopqrstuvwxyz"
    monkeypatch.setenv("SERVICE_TOKEN", secret)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_scorer.py").write_text("import os\nraise RuntimeError('cannot start with ' + os.environ['SERVICE_TOKEN'])\n")
    run = generated(tmp_path, RecordingBackend())
    for debug in (None, "1"):
        result = invoke("score", str(run), "--scorer", "python:broken_scorer:score", "--no-progress", env={"NEAT_DATA_DEBUG": debug})
        assert result.exit_code == 1 and secret not in result.output and "***" in result.output, result.output
        assert ("Traceback" in result.output) == bool(debug)
        assert result.output.strip().splitlines()[-1].startswith("error: unexpected RuntimeError: cannot start with ***")


def test_a_run_where_no_row_succeeded_exits_3_with_its_summary(tmp_path: Path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    result = invoke(
        "generate",
        "--prompts",
        str(prompts),
        "--model",
        "m",
        "--backend",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--max-retries",
        "0",
        "--request-timeout",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    )
    assert result.exit_code == 3, result.output
    assert "12 rows (0 ok, 12 error" in result.output and "error: " in result.output and "no row succeeded" in result.output


def test_export_of_a_second_split_keeps_the_first(tmp_path: Path):
    """Before: `export --split test` after `--split train` replaced the hf/ DatasetDict and lost train."""
    from datasets import load_from_disk

    run = generated(tmp_path, RecordingBackend())
    assert invoke("score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress").exit_code == 0
    assert invoke("rank", str(run)).exit_code == 0
    for split in ("train", "test", "train"):
        assert invoke("export", str(run), "--format", "trl", "--split", split).exit_code == 0
    saved = load_from_disk(str(run / "export" / "trl" / "hf"))
    pairs = pq.read_table(run / "ranked" / "pairs.parquet").num_rows
    assert sorted(saved) == ["test", "train"] and len(saved["train"]) == len(saved["test"]) == pairs > 0
    assert sorted(p.name for p in (run / "export" / "trl").glob("*.parquet")) == ["test.parquet", "train.parquet"]


def test_push_without_a_token_is_one_line(tmp_path: Path):
    run = generated(tmp_path, RecordingBackend())
    for args in (
        ["score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress"],
        ["rank", str(run)],
        ["export", str(run), "--format", "h4"],
    ):
        assert invoke(*args).exit_code == 0
    result = invoke("push", str(run), "--repo-id", "me/data", env={"HF_TOKEN": None, "HF_HOME": str(tmp_path / "hf-home")})
    assert result.exit_code == 2 and result.output.startswith("error: option 'token_env': no Hub token: set $HF_TOKEN"), result.output


def test_prompts_with_their_own_system_message_combine_with_the_steering_text(tmp_path: Path):
    """A persona in the dataset: prepend (default) puts the steering text first, a blank line, then the persona;
    append the other way; the neutral prompt keeps the persona; each row records how it was combined."""
    persona = {"messages": [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}]}
    prompts = write_jsonl(tmp_path / "p.jsonl", [persona, {"prompt": "Plain"}])
    for combine in ("prepend", "append"):
        backend = RecordingBackend()
        run_generate(
            GenerateConfig(
                prompts=str(prompts),
                model="fake",
                out=tmp_path / combine,
                num_pos=1,
                num_neg=1,
                num_neutral=1,
                pairs=["harmless"],
                system_combine=combine,
                sampling=Sampling(max_tokens=8),
            ),
            backend=backend,
            progress=False,
        )
        rows = pq.read_table(tmp_path / combine / "generations").to_pylist()
        sent = {
            (messages[-1]["content"], messages[0]["content"] if messages[0]["role"] == "system" else None)
            for messages, _, _ in backend.sent
        }
        for row in rows:
            if row["prompt"][-1]["content"] != "Hi":
                assert row["system_combine"] is None
                continue
            assert row["prompt"] == persona["messages"]  # the neutral prompt: what the policy will see later
            if row["steering"] == "none":
                assert row["system_combine"] is None and ("Hi", "You are a pirate.") in sent
                continue
            assert row["system_combine"] == combine
            expected = (
                f"{row['system_prompt']}\n\nYou are a pirate." if combine == "prepend" else f"You are a pirate.\n\n{row['system_prompt']}"
            )
            assert ("Hi", expected) in sent
    changed = invoke(
        "generate",
        "--prompts",
        str(prompts),
        "--model",
        "fake",
        "--backend",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--num-pos",
        "1",
        "--num-neg",
        "1",
        "--num-neutral",
        "1",
        "--max-tokens",
        "8",
        "--system-combine",
        "prepend",
        "--out",
        str(tmp_path / "append"),
    )
    assert changed.exit_code == 2 and "field 'system_combine': run folder was made with a different config" in changed.output


def _recipe(folder: Path, source: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {
        "name": "t",
        "out": str(folder / "runs"),
        "model": "some-org/m",
        "prompts": {"source": source, "heldout": 1, "per_round": 1},
        "rounds": 1,
        **extra,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_a_relative_prompts_source_is_relative_to_the_file_that_names_it(tmp_path: Path, monkeypatch):
    """README: relative to the recipe's folder — before, a same-named file in the current folder won. A `--set` value is
    typed on the command line, so it is relative to the current folder."""
    recipe_dir, elsewhere = tmp_path / "recipes", tmp_path / "cwd"
    write_jsonl(recipe_dir / "data" / "p.jsonl", PROMPTS) if (recipe_dir / "data").mkdir(parents=True) is None else None
    write_jsonl(elsewhere / "data" / "p.jsonl", [{"prompt": "decoy"}]) if (elsewhere / "data").mkdir(parents=True) is None else None
    path = _recipe(recipe_dir, "data/p.jsonl")
    monkeypatch.chdir(elsewhere)
    assert load_recipe(path).prompts.source == str(recipe_dir / "data" / "p.jsonl")
    assert load_recipe(path, ["prompts.source=data/p.jsonl"]).prompts.source == str(elsewhere / "data" / "p.jsonl")
    assert load_recipe(path, ["prompts.source=hf://org/set@train"]).prompts.source == "hf://org/set@train"


def test_a_failed_run_records_nothing_so_the_corrected_command_runs(tmp_path: Path):
    """Before: validation failures (too few prompts for the held-out split, a missing scorer model) still wrote the
    manifest, and the corrected command was refused as "made with another recipe"."""
    write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    path = _recipe(
        tmp_path,
        "p.jsonl",
        generate={"backend": "openai", "options": {"base_url": "http://127.0.0.1:9/v1"}},
        score={"scorer": "python:reliability_scorers:other"},
        evaluate={"backend": "openai", "options": {"base_url": "http://127.0.0.1:9/v1"}},
    )
    for bad in (["prompts.heldout=10"], ["score.scorer=self-contrast", "score.model=/no/such/model"]):
        result = invoke("run", str(path), *[part for text in bad for part in ("--set", text)])
        assert result.exit_code == 2, result.output
        assert not (tmp_path / "runs").exists()
    again = invoke("run", str(path), "--set", "prompts.heldout=1")  # the corrected command gets past validation
    assert "made with another recipe" not in again.output and (tmp_path / "runs" / "manifest.json").is_file(), again.output


def test_an_engine_error_quoting_an_environment_secret_is_scrubbed_in_the_row(tmp_path: Path, monkeypatch):
    """Error text from any backend (an engine's exception, a user scorer's under Ray) goes into a file; a secret-looking
    environment variable's value (or a long piece of it) never does."""
    secret = "tok-" + "a1b2c3d4" * 6
    monkeypatch.setenv("SERVICE_TOKEN", secret)
    run = generated(
        tmp_path, RecordingBackend(fail_when=lambda messages: f"HTTP 500: rejected {secret[:30]}… for {messages[-1]['content']}")
    )
    rows = pq.read_table(run / "generations").to_pylist()
    assert rows and all(r["status"] == "error" and "***" in r["error"] and secret[:16] not in r["error"] for r in rows)
    assert not [p for p in run.rglob("*") if p.is_file() and secret[:16].encode() in p.read_bytes()]
