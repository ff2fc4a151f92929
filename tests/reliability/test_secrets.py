"""Secrets: with a random OPENAI_API_KEY and HF_TOKEN in the environment, the whole pipeline (generate on the
openai backend → score → rank → export → report → push to a Hub in a temp folder), its console output,
every `--help` and the error lines hold neither value — while both are provably used (the server saw the
key, the Hub client got the token), and a server that echoes the key back in an error body is redacted.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import served_generate_args, write_jsonl
from fakehub import FakeHub
from harness import read_shards, run_neat, subprocess_env

from neat_data.cli import cli
from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings

API_KEY = "sk-" + secrets.token_hex(20)
HF_TOKEN = "hf_" + secrets.token_hex(20)


@pytest.fixture
def secret_env(monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    return subprocess_env()


def files_holding_a_secret(folder: Path) -> list[str]:
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()  # raw bytes: Parquet pages, PNG text chunks, JSON, logs
            hits += [f"{path} holds {name}" for name, value in (("api key", API_KEY), ("hf token", HF_TOKEN)) if value.encode() in data]
    return hits


def all_command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        paths += all_command_paths(command, prefix + (name,)) if isinstance(command, click.Group) else [prefix + (name,)]
    return paths


def test_no_secret_reaches_a_file_a_log_or_the_console(secret_env, tmp_path: Path, monkeypatch):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"question {i}"} for i in range(6)] + [{"prompt": "check my key [[fault:401]]"}]
    )  # this server echoes the key in a 401 body
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    server = FakeOpenAIServer(ServerSettings()).start()
    try:
        steps = [
            served_generate_args(prompts, server.url, run, num_pos=2, num_neg=2, max_tokens=8),
            ["score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress"],
            ["rank", str(run)],
            ["export", str(run), "--format", "h4"],
            ["report", str(run)],
        ]
        for step in steps:
            result = run_neat(*step, env=secret_env)
            (logs / f"{step[0]}.log").write_text(result.stdout + result.stderr)
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        server.stop()
    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    pushed = CliRunner().invoke(cli, ["push", str(run), "--repo-id", "me/neat", "--config-name", "round_1", "--backoff-base", "0"])
    (logs / "push.log").write_text(pushed.output)
    assert pushed.exit_code == 0, pushed.output

    assert f"Bearer {API_KEY}" in server.authorizations and HF_TOKEN in hub.tokens_seen  # both secrets were really used
    echoed = [row for row in read_shards(run / "generations") if row["status"] == "error"]
    assert len(echoed) == 4 and all(row["error"].endswith("HTTP 401: Error code: 401 - Incorrect API key provided: ***") for row in echoed)
    assert (run / "report" / "scores.png").is_file() and (hub.repo("me/neat") / "README.md").is_file()
    assert files_holding_a_secret(tmp_path) == []
    print(
        f"\nFIGURES secrets: {sum(1 for p in tmp_path.rglob('*') if p.is_file())} files written and grepped, "
        f"{len(files_holding_a_secret(tmp_path))} hits"
    )


def test_no_secret_in_help_or_error_lines(secret_env, tmp_path: Path, monkeypatch):
    runner = CliRunner()
    outputs = []
    for path in all_command_paths(cli):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        outputs.append(result.output)
    assert len(outputs) >= 10  # the group, prompts list/show, generate, score, rank, export, report, push, quickstart
    # error lines that could carry a secret: a Hub error whose message quotes the token, a file named after the key
    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    hub.fail_next(401, message=f"Invalid credentials in Authorization header: Bearer {HF_TOKEN}")
    export = tmp_path / "run" / "export" / "h4" / "hf"
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]})}).save_to_disk(str(export))
    errors = [
        runner.invoke(cli, ["push", str(tmp_path / "run"), "--repo-id", "me/neat", "--backoff-base", "0"]),
        runner.invoke(cli, ["generate", "--prompts", str(tmp_path / f"{API_KEY}.jsonl"), "--model", "m", "--out", str(tmp_path / "r")]),
    ]
    for result in errors:
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output
        outputs.append(result.output)
    assert "HTTP 401" in errors[0].output and "***" in errors[0].output and "***.jsonl" in errors[1].output
    assert not [text for text in outputs if API_KEY in text or HF_TOKEN in text]


def test_a_secret_is_scrubbed_whatever_its_variable_is_called(tmp_path: Path, monkeypatch):
    """`--token-env MY_HUB_CREDENTIAL`: a name without KEY/TOKEN/SECRET/PASSWORD in it. A Hub 401 that quotes the
    token is still one line without it, because the program was handed that variable as a secret."""
    credential = "hf_" + secrets.token_hex(20)
    monkeypatch.setenv("MY_HUB_CREDENTIAL", credential)
    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    hub.fail_next(401, message=f"Invalid credentials in Authorization header: Bearer {credential}")
    export = tmp_path / "run" / "export" / "h4" / "hf"
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]})}).save_to_disk(str(export))
    args = ["push", str(tmp_path / "run"), "--repo-id", "me/neat", "--token-env", "MY_HUB_CREDENTIAL", "--backoff-base", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and result.output.startswith("error: ") and "HTTP 401" in result.output, result.output
    assert credential not in result.output and "Bearer ***" in result.output, result.output


def test_a_stage_of_a_run_scrubs_the_secrets_the_recipe_names(tmp_path: Path):
    """`neat-data run` starts each stage as its own process, whose output goes to the stage's log: the recipe's
    `api_key_env: X` reaches that process by name, so the score stage's failing line — quoting $X's value — is
    scrubbed in the log and on the console, and the key still reached the server. What the scorer writes past
    Python's streams (fd 1 and 2, a child process) is scrubbed on its way into the log."""
    import yaml

    key = "sk-" + secrets.token_hex(20)
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"question {i}"} for i in range(4)])
    server = FakeOpenAIServer(ServerSettings()).start()
    try:
        backend = {"backend": "openai", "options": {"base_url": server.url, "api_key_env": "X"}}
        recipe = {
            "name": "t",
            "out": str(tmp_path / "runs"),
            "model": "some-org/served",
            "prompts": {"source": "prompts.jsonl", "heldout": 1, "per_round": 2},
            "rounds": 1,
            "generate": {**backend, "num_pos": 1, "num_neg": 1, "max_tokens": 8},
            "score": {"scorer": "python:reliability_scorers:leaks_a_handed_secret"},
            "evaluate": backend,
        }
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        result = run_neat("run", str(tmp_path / "recipe.yaml"), env=subprocess_env(X=key))
    finally:
        server.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "service rejected key ***" in output, output
    assert f"Bearer {key}" in server.authorizations  # the key was really handed over
    logs = list((tmp_path / "runs").rglob("*.log"))
    assert any("service rejected key ***" in log.read_text() for log in logs), output
    failed = next(text for text in (log.read_bytes().decode() for log in logs) if "service rejected key ***" in text)  # base eval
    assert "engine: connecting with ***\n" in failed and "\rscoring  10% key=***\r" in failed, failed  # past Python's streams
    assert "child process: ***\n" in failed, failed
    assert key not in output and not [
        path for path in (tmp_path / "runs").rglob("*") if path.is_file() and key.encode() in path.read_bytes()
    ]


def test_a_stage_log_is_copied_whole_and_scrubbed(monkeypatch):
    """A `StageLogCopy` over a real pipe: every byte that is not a secret arrives (non-UTF-8 bytes, progress bars'
    carriage returns, a 220 KiB line without a newline), and no secret does — a key, a 13-character password, a
    passphrase with spaces — however the writes and the long line's pieces cut them."""
    import io
    import os
    import threading

    from neat_data.rounds.runner import StageLogCopy

    key, password, phrase = "tok_" + secrets.token_hex(24), "hunter2hunter", "correct horse battery staple"
    monkeypatch.setenv("SERVICE_TOKEN", key)  # secret-looking names: scrubbed without being handed
    monkeypatch.setenv("DB_PASSWORD", password)
    monkeypatch.setenv("MY_PASSPHRASE_KEY", phrase)
    dense = (f"w {key}{password} {phrase}" * 2_500).encode()  # ~220 KiB, mostly secrets: where a piece is cut matters
    text = b"\xff\xfe not utf-8 \xc3 and " + key.encode() + b"\n\rbar 10% " + key.encode() + b"\rbar 90%" + dense
    text += b" " + b"x" * 140_000 + b" tail " + password.encode()  # a 140 KiB run without a space, and a last line
    read_end, write_end = os.pipe()

    def write_in_odd_pieces() -> None:
        for start in range(0, len(text), 997):  # writes that cut the secrets anywhere
            os.write(write_end, text[start : start + 997])
        os.close(write_end)

    writer = threading.Thread(target=write_in_odd_pieces)
    writer.start()
    log = io.BytesIO()
    with os.fdopen(read_end, "rb") as source:
        StageLogCopy(source, log).start().thread.join(60)
    writer.join()
    expected = text.replace(phrase.encode(), b"***").replace(key.encode(), b"***").replace(password.encode(), b"***")
    assert log.getvalue() == expected


def test_a_stage_log_that_cannot_be_written_is_one_error_and_no_hang(tmp_path: Path, monkeypatch):
    """The disk under the log is full (/dev/full): the stage is not left blocked on its pipe; the runner names the log
    and the error once the stage has ended. A worker the stage left holding its output is killed after the drain."""
    import subprocess
    import sys
    import time

    from neat_data.rounds import runner

    started = time.time()
    with open("/dev/full", "ab") as full, pytest.raises(OSError) as caught:
        runner.run_stage_process([sys.executable, "-c", "import sys; sys.stdout.write('x' * 1_000_000)"], full)
    assert caught.value.filename == "/dev/full" and "No space left on device" in caught.value.strerror
    assert time.time() - started < 30

    monkeypatch.setattr(runner, "LOG_DRAIN_SECONDS", 1.0)
    marker = tmp_path / "late"
    leaves_a_worker = f"(sleep 8; echo late; touch {marker}) & echo stage done"
    with open(tmp_path / "stage.log", "ab") as log:
        started = time.time()
        assert runner.run_stage_process(["sh", "-c", leaves_a_worker], log) == (0, None)
    assert time.time() - started < 6  # not the worker's 8 s
    time.sleep(8)
    assert (tmp_path / "stage.log").read_text() == "stage done\n" and not marker.exists()  # the worker was killed
    assert subprocess.run(["pgrep", "-f", f"touch {marker}"], capture_output=True).returncode == 1
