"""Two processes on one run folder: the second is refused at once with a clear line (exit 2), and the
first finishes with every row exactly once."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import served_generate_args
from harness import read_shards, run_neat, shard_names, start_neat, write_prompts

from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path: Path):
    server = FakeOpenAIServer(ServerSettings(latency=0.5, record=False)).start()  # ~15 s held: two CLI starts fit on a loaded machine
    out = tmp_path / "run"
    args = served_generate_args(write_prompts(tmp_path / "prompts.jsonl", 30), server.url, out, max_concurrency=2, flush_every=4)
    try:
        first = start_neat(*args)
        deadline = time.monotonic() + 60
        while not shard_names(out / "generations") and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, "the first run must still hold the folder"
        refusals = [run_neat(*args), run_neat("score", str(out), "--scorer", "python:reliability_scorers:slow_length", "--no-progress")]
        still_running = first.poll() is None
        output, _ = first.communicate(timeout=120)
    finally:
        server.stop()
    assert still_running, "the refusals must have happened while the first run held the lock"
    for refused in refusals:
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode == 2 and len(lines) == 1, refused.stdout + refused.stderr
        assert lines[0] == f"error: {out}: run folder is in use by another neat-data process (wait for it, or use another --out)"
    assert first.returncode == 0, output.decode()
    rows = read_shards(out / "generations")
    assert len(rows) == 60 and len({row["key"] for row in rows}) == 60 and all(row["status"] == "ok" for row in rows)
    assert not (out / "scored").exists()  # the refused score wrote nothing
    entry = json.loads((out / "manifest.json").read_text())["stages"]
    assert set(entry) == {"generate"} and entry["generate"]["finished"] and entry["generate"]["rows"] == 60
