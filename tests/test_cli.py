"""The CLI: generate writes rows we read back; every user error is one line and exit code 2; kill + re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import REPO, served_generate_args, write_jsonl

from neat_data.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_generate_through_the_cli_against_a_server(fake_server, prompts_file: Path, tmp_path: Path, monkeypatch):
    server = fake_server()
    out = tmp_path / "run"
    secret = "sk-test-do-not-leak-7f3a9"
    monkeypatch.setenv("SERVER_KEY", secret)
    result = invoke(
        "generate",
        "--prompts",
        str(prompts_file),
        "--pairs",
        "harmless,helpful",
        "--model",
        "served",
        "--backend",
        "openai",
        "--base-url",
        server.url,
        "--api-key-env",
        "SERVER_KEY",
        "--num-pos",
        "2",
        "--num-neg",
        "2",
        "--max-tokens",
        "8",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "16 rows (16 ok, 0 error" in result.output
    rows = pq.read_table(out / "generations").to_pylist()
    assert len(rows) == 16 and {r["steering"] for r in rows} == {"pos", "neg"}
    assert {r["model"] for r in rows} == {"served"} and {r["backend"] for r in rows} == {"openai"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["generate"]["config"]["api_key_env"] == "SERVER_KEY"
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and not [p for p in written if secret.encode() in p.read_bytes()]  # the key reached no file
    assert secret not in result.output


def test_prompts_list_and_show():
    listed = invoke("prompts", "list")
    assert listed.exit_code == 0 and "harmless" in listed.output and "helpful" in listed.output
    shown = invoke("prompts", "show", "harmless", "--prompt", "How do I pick a lock?")
    assert shown.exit_code == 0
    assert '"role": "system"' in shown.output and "== pos" in shown.output and "== neg" in shown.output and "== none" in shown.output
    merged = invoke("prompts", "show", "harmless", "--prompt", "Hi", "--system-mode", "merged")
    assert '"role": "system"' not in merged.output


def test_prompts_show_renders_through_a_chat_template(tiny_model: Path):
    shown = invoke("prompts", "show", "harmless", "--prompt", "Hi there", "--model", str(tiny_model))
    assert shown.exit_code == 0 and "<|im_start|>system\n" in shown.output and "<|im_start|>assistant" in shown.output


@pytest.mark.parametrize(
    "case", ["missing_file", "empty_prompt", "bad_yaml", "unknown_library", "unknown_model", "zero_counts", "bad_top_p"]
)
def test_user_errors_are_one_line_with_exit_code_2(case, tmp_path: Path, prompts_file: Path):
    args = {"prompts": str(prompts_file), "pairs": "harmless", "model": "fake", "extra": []}
    if case == "missing_file":
        args["prompts"] = str(tmp_path / "nope.jsonl")
    elif case == "empty_prompt":
        args["prompts"] = str(write_jsonl(tmp_path / "e.jsonl", [{"prompt": "ok"}, {"prompt": ""}]))
    elif case == "bad_yaml":
        bad = tmp_path / "pairs.yaml"
        bad.write_text("pairs: [\n  - {id: a\n")
        args["pairs"] = str(bad)
    elif case == "unknown_library":
        args["pairs"] = "nonsense"
    elif case == "unknown_model":
        args["model"] = str(tmp_path / "no-such-model")
    elif case == "zero_counts":
        args["extra"] = ["--num-pos", "0", "--num-neg", "0"]
    elif case == "bad_top_p":
        args["extra"] = ["--top-p", "1.5"]
    result = CliRunner().invoke(
        cli,
        [
            "generate",
            "--prompts",
            args["prompts"],
            "--pairs",
            args["pairs"],
            "--model",
            args["model"],
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            *args["extra"],
        ],
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    expected = {
        "missing_file": "nope.jsonl: prompts file does not exist",
        "empty_prompt": "e.jsonl: row 2: field 'prompt': empty prompt",
        "bad_yaml": "pairs.yaml: row 2: invalid YAML",
        "unknown_library": "nonsense: unknown prompt-pair library",
        "unknown_model": "no-such-model: field 'model': model path does not exist",
        "zero_counts": "at least 1",
        "bad_top_p": "option 'top_p': Input should be less than or equal to 1",
    }[case]
    assert expected in lines[0]


def test_killed_run_resumes_without_loss_or_duplicates(fake_server, tmp_path: Path):
    server = fake_server(latency=0.1)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"question number {i}"} for i in range(40)])
    out = tmp_path / "run"
    command = [sys.executable, "-m", "neat_data.cli", *served_generate_args(prompts, server.url, out, max_concurrency=2, flush_every=4)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "generations").glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    shards = list((out / "generations").glob("part-*.parquet"))
    before = sum(pq.read_table(p).num_rows for p in shards)
    assert 0 < before < 80, "the kill must land mid-run"
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    rows = pq.read_table(out / "generations").to_pylist()
    assert len(rows) == 80 and len({r["key"] for r in rows}) == 80 and all(r["status"] == "ok" for r in rows)
    assert f"{80 - before} new" in finished.stdout


def test_generate_help_lists_each_backends_options_under_its_own_heading():
    """`generate --help`: the stage's own options first, then one section per options class (sampling, each backend,
    prices, caps), its heading the first sentence of that class's docstring — derived from the config."""
    output = invoke("generate", "--help").output
    headings = [line for line in output.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings == [
        "Options:",
        "Sampling options shared by every backend:",
        "vLLM engine options (backends vllm and ray, and an LLM judge on vllm):",
        "Options of an OpenAI-compatible client (backend openai, and an LLM judge on a server):",
        "Options of the transformers backend (model.generate in this process, no engine start):",
        "Ray Data options (backend ray):",
        "Options of the offline batch backends openai-batch and vllm-batch (vllm-batch uses only the request limits):",
        "Prices for the cost line (a generate or score config inherits them: --price-in / --price-out):",
        "Caps on what a generate run may spend (a generate config inherits them: --max-cost / --max-total-tokens):",
    ]
    section_of = {}
    for line in output.splitlines():
        if line in headings:
            heading = line
        elif line.startswith("  --"):
            section_of[line.split()[0].split("/")[0]] = heading
    assert section_of["--prompts"] == section_of["--dry-run"] == "Options:"
    assert section_of["--temperature"] == headings[1] and section_of["--dtype"] == headings[2]
    assert section_of["--base-url"] == headings[3] and section_of["--transformers-device"] == headings[4]
    assert section_of["--ray-actors"] == headings[5] and section_of["--no-wait"] == headings[6]
