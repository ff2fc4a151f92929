"""Push through the real `datasets.push_to_hub` path into a Hub kept in a temp folder (tests/fakehub.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fakehub import FakeHub

from neat_data.cli import cli
from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

TOKEN = "hf_TESTtokenNEVERwritten123"


def response_length(prompts, responses):
    return [float(len(r)) for r in responses]


@pytest.fixture
def exported_run(prompts_file: Path, tmp_path: Path, monkeypatch) -> Path:
    run = tmp_path / "run"
    run_generate(
        GenerateConfig(prompts=str(prompts_file), model="fake", out=run, num_pos=2, num_neg=2, sampling=Sampling(max_tokens=8)),
        backend=RecordingBackend(),
        progress=False,
    )
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    runner = CliRunner()
    for args in (
        ["score", str(run), "--scorer", "python:test_push:response_length", "--no-progress"],
        ["rank", str(run)],
        ["export", str(run), "--format", "h4"],
        ["report", str(run)],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def hub(tmp_path: Path, monkeypatch) -> FakeHub:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return FakeHub(tmp_path / "hub").install(monkeypatch)


def push(run: Path, *args: str):
    return CliRunner().invoke(cli, ["push", str(run), "--repo-id", "me/neat-hh", "--backoff-base", "0", *args])


def test_push_writes_private_parquet_and_a_card_without_the_token(exported_run: Path, hub: FakeHub):
    result = push(exported_run, "--config-name", "round_1")
    assert result.exit_code == 0, result.output
    assert "private" in result.output and hub.private["me/neat-hh"] is True
    repo = hub.repo("me/neat-hh")
    shards = list((repo / "round_1").glob("train-*.parquet"))
    assert len(shards) == 1
    assert pq.read_table(shards[0]).to_pylist() == pq.read_table(exported_run / "export" / "h4" / "train.parquet").to_pylist()
    card = (repo / "README.md").read_text()
    assert "config_name: round_1" in card and "<!-- neat-data:begin round_1 -->" in card
    assert "**Model**: `fake`" in card and "`harmless` (sha256 `" in card and "neat-data push" in card
    assert "| pos | 8 |" in card and "python:test_push:response_length" in card
    assert (repo / "neat-data" / "round_1" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert TOKEN in hub.tokens_seen  # the token was handed to the Hub client …
    for folder in (hub.root, exported_run):  # … and reached no file
        assert not [p for p in folder.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert TOKEN not in result.output


def test_a_card_that_would_carry_the_token_is_refused(exported_run: Path, hub: FakeHub, monkeypatch):
    # A manifest never holds the token, so only a token that happens to equal text of the card can get there: here
    # the scorer's name. The card must not reach the Hub, and the failure line must not print the token.
    token = "python:test_push:response_length"
    monkeypatch.setenv("HF_TOKEN", token)
    result = push(exported_run, "--config-name", "round_1")
    assert result.exit_code != 0
    assert "refusing to upload README.md: it contains the Hub token" in result.output
    assert token not in result.output
    card = hub.repo("me/neat-hh") / "README.md"
    assert not card.exists() or token not in card.read_text()


def test_second_config_keeps_the_first_and_a_repush_replaces_its_section(exported_run: Path, hub: FakeHub):
    assert push(exported_run, "--config-name", "round_1").exit_code == 0
    assert push(exported_run, "--config-name", "round_2").exit_code == 0
    assert push(exported_run, "--config-name", "round_2").exit_code == 0
    card = (hub.repo("me/neat-hh") / "README.md").read_text()
    for name in ("round_1", "round_2"):
        assert f"config_name: {name}" in card and card.count(f"<!-- neat-data:begin {name} -->") == 1
    assert card.index("neat-data:begin round_1") < card.index("neat-data:begin round_2")


def test_rate_limits_are_retried_then_a_clear_failure(exported_run: Path, hub: FakeHub):
    hub.fail_next(429, 2, retry_after="0")
    result = push(exported_run, "--config-name", "round_1")
    assert result.exit_code == 0, result.output
    hub.fail_next(412, 10)
    result = push(exported_run, "--config-name", "round_2", "--max-retries", "2")
    assert result.exit_code == 2
    assert "failed after 3 attempts: HTTP 412 (concurrent commit)" in result.output and "Traceback" not in result.output


def test_push_without_an_export_is_a_clear_error(tmp_path: Path, hub: FakeHub):
    result = push(tmp_path, "--config-name", "x")
    assert result.exit_code == 2 and "no h4 export" in result.output
    bad = CliRunner().invoke(cli, ["push", str(tmp_path), "--repo-id", "not a repo"])
    assert bad.exit_code == 2 and "repo_id" in bad.output


def test_an_exhausted_rate_limit_fails_clearly_and_keeps_what_was_pushed(exported_run: Path, hub: FakeHub):
    import json

    assert push(exported_run, "--config-name", "round_1").exit_code == 0
    card_before = (hub.repo("me/neat-hh") / "README.md").read_text()
    hub.fail_next(429, 10, retry_after="0")
    result = push(exported_run, "--config-name", "round_2", "--max-retries", "3")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines[-1].startswith("error: ") and "Traceback" not in result.output
    assert "failed after 4 attempts: HTTP 429 (rate limited)" in lines[-1]
    assert len(hub.failures) == 10 - 4  # exactly max_retries + 1 attempts, then it stopped
    assert (hub.repo("me/neat-hh") / "README.md").read_text() == card_before  # round_1's card untouched
    stages = json.loads((exported_run / "manifest.json").read_text())["stages"]
    assert "push:round_1" in stages and "push:round_2" not in stages  # a failed push is not recorded as done


def test_retry_after_is_honoured_and_backoff_doubles():
    from fakehub import _error
    from huggingface_hub.errors import HfHubHTTPError

    from neat_data.stages.push import with_retries

    answers = [
        _error(HfHubHTTPError, 429, "slow down", {"retry-after": "7"}),
        _error(HfHubHTTPError, 503, "busy"),
        _error(HfHubHTTPError, 503, "busy"),
        "done",
    ]
    slept: list[float] = []

    def action():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert with_retries(action, what="push", max_retries=5, backoff_base=1.0, sleep=slept.append) == "done"
    assert slept[0] == 7.0  # the server's Retry-After wins
    assert 1.0 <= slept[1] <= 2.0 and 2.0 <= slept[2] <= 4.0  # then base · 2^attempt with jitter in [½, 1]


def test_a_run_page_holding_the_token_in_its_packed_data_is_not_published(tmp_path: Path, hub: FakeHub):
    """view.html packs its data (gzip + base64), so a search of the file's bytes cannot see a token in a response:
    the check reads the page unpacked. A page without it goes up."""
    from neat_data.core.errors import NeatError
    from neat_data.rounds.publish import PushSpec, upload_run_files
    from neat_data.view.page import render_page

    spec = PushSpec(repo_id="me/neat-run", backoff_base=0)
    leaking, clean = tmp_path / "leaking", tmp_path / "clean"
    for folder, response in ((leaking, f"the key is {TOKEN}, use it"), (clean, "nothing secret")):
        folder.mkdir()
        page = render_page({"responses": [response]}, {"texts": [response]}, title="run").encode("utf-8")
        (folder / "view.html").write_bytes(page)
    assert TOKEN.encode() not in (leaking / "view.html").read_bytes()  # packed: invisible to a plain byte search

    with pytest.raises(NeatError, match="refusing to upload neat-data/view.html: it contains the Hub token"):
        upload_run_files(spec, leaking)
    assert not (hub.root / "me" / "neat-run" / "neat-data" / "view.html").exists() and not [p for p in hub.root.rglob("view.html")]
    assert upload_run_files(spec, clean)[0] == "neat-data/view.html"
    assert (hub.repo("me/neat-run") / "neat-data" / "view.html").read_bytes() == (clean / "view.html").read_bytes()


def test_the_card_carries_the_data_audit_verdicts(exported_run: Path, hub: FakeHub):
    audited = CliRunner().invoke(cli, ["audit", str(exported_run), "--resamples", "100"])
    assert audited.exit_code == 0, audited.output
    assert push(exported_run, "--config-name", "round_1").exit_code == 0
    card = (hub.repo("me/neat-hh") / "README.md").read_text()
    section = card[card.index("Data audit (`neat-data audit`)") :]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    assert [row.split(" | ")[0][2:] for row in rows[:8]] == [
        "length",
        "bag-of-words",
        "best-negative",
        "refusal-flip",
        "duplicates",
        "near-duplicates",
        "truncated",
        "ties",
    ]
    summary = json.loads((exported_run / "audit" / "audit.json").read_text())
    length = next(c for c in summary["checks"] if c["check"] == "length")
    assert f"| length | {length['verdict']} | {length['value']:.3f} | {length['rule']} |" in card
    assert "neat-data audit" in card.split("Commands:")[1]
    assert (hub.repo("me/neat-hh") / "neat-data" / "round_1" / "audit.png").read_bytes()[:4] == b"\x89PNG"


def test_push_writes_a_valid_croissant_and_the_card_states_licences_and_determinism(exported_run: Path, hub: FakeHub):
    import hashlib

    import mlcroissant

    assert push(exported_run, "--config-name", "round_1").exit_code == 0
    repo = hub.repo("me/neat-hh")
    path = repo / "neat-data" / "round_1" / "croissant.json"
    mlcroissant.Dataset(jsonld=str(path))  # raises on a validation error
    document = json.loads(path.read_text())
    (shard,) = (repo / "round_1").glob("train-*.parquet")
    (file_object,) = document["distribution"]
    assert file_object["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert file_object["contentUrl"] == f"https://huggingface.co/datasets/me/neat-hh/resolve/main/round_1/{shard.name}"
    assert document["prov:wasGeneratedBy"][-1]["prov:label"] == "push"
    assert document["prov:wasGeneratedBy"][-1]["description"].startswith("neat-data push")
    card = (repo / "README.md").read_text()
    assert "generator `fake`: unknown (no local model folder to read)" in card  # not a folder here: never guessed
    determinism = next(line for line in card.splitlines() if line.startswith("- **Determinism**"))
    assert "backend `vllm`" in determinism and "seed 0" in determinism and "not across devices, tensor-parallel sizes" in determinism


def test_model_licences_are_read_from_the_folder_or_unknown(tmp_path: Path):
    from neat_data.stages.provenance import model_licence

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert model_licence(str(folder)) == {"model": str(folder), "licence": "unknown", "source": "not stated in config.json"}
    (folder / "LICENSE").write_text("\n  MIT License\n\nCopyright …")
    assert model_licence(str(folder))["licence"] == "MIT License" and model_licence(str(folder))["source"] == "LICENSE"
    (folder / "README.md").write_text("---\nlanguage: en\nlicense: apache-2.0\n---\n# A model\n")
    assert model_licence(str(folder)) == {"model": str(folder), "licence": "apache-2.0", "source": "README.md (front matter)"}


def test_embedded_models_licence_is_their_upstream_one_built_or_not(tmp_path: Path, monkeypatch):
    from neat_data.stages.provenance import model_licence

    monkeypatch.setenv("NEAT_DATA_CACHE", str(tmp_path / "empty-cache"))  # nothing built: the GGUF carries no licence anyway
    for alias in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        assert model_licence(alias) == {"model": alias, "licence": "apache-2.0", "source": "upstream licence of the embedded model"}
