"""A real `neat-data run` with a `push:` section, into the fake Hub (tests/fakehub.py): the first push fails (the
round still finishes, the failure is recorded without the token), the next run retries it; then the run's
view.html in Chromium: the rounds table and curves with every held-out metric, the held-out and suite answers side by
side.

The run: the tiny model (tests/tinymodel.py) trained for real; generation and held-out answers from our fake
OpenAI-compatible server (a real HTTP server); the python scorer of tests/view_runs.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import write_jsonl
from fakehub import FakeHub

from neat_data.core.errors import NeatError
from neat_data.view.browser import missing

TOKEN = "hf_VIEWtestTOKENneverWRITTEN42"
QUESTIONS = [
    "How do I boil an egg?",
    "What is the capital of France?",
    "Tell me a joke about cats.",
    "What is a fox?",
    "Why do cats sleep?",
    "Is the fox quick?",
]


def recipe_file(folder: Path, model: Path, base_url: str) -> Path:
    prompts = write_jsonl(folder / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])
    recipe = {
        "name": "published",
        "out": str(folder / "runs" / "published"),
        "model": str(model),
        "prompts": {"source": str(prompts), "heldout": 2, "per_round": 3},
        "pairs": ["harmless"],
        "rounds": 1,
        "generate": {"backend": "openai", "num_pos": 2, "num_neg": 2, "max_tokens": 8, "options": {"base_url": base_url}},
        "score": {"scorer": "python:view_runs:score_by_length"},
        "exports": ["ranked", "trl"],
        "train": {"lr": 1e-3, "epochs": 1, "prompts_per_batch": 2, "warmup_ratio": 0.0},
        "evaluate": {
            "backend": "openai",
            "max_tokens": 8,
            "suites": ["harmbench-standard", "benign"],
            "suite_limit": 3,
            "options": {"base_url": base_url},
        },
        "push": {"repo_id": "me/neat-run", "max_retries": 1, "backoff_base": 0},
    }
    path = folder / "published.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def published(tiny_model: Path, tmp_path_factory) -> SimpleNamespace:
    from neat_data.rounds.recipe import load_recipe
    from neat_data.rounds.runner import run_rounds
    from neat_data.testing.fake_openai_server import FakeOpenAIServer

    root = tmp_path_factory.mktemp("published")
    with FakeOpenAIServer() as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", TOKEN)
        tests = str(Path(__file__).parent)  # the stages run in their own processes: they import the scorer from here
        patch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        hub = FakeHub(root / "hub").install(patch)
        recipe = load_recipe(recipe_file(root, tiny_model, server.url))
        run_dir = recipe.run_dir()
        # 1. the Hub refuses the token (and echoes it, as some servers do): the round finishes, the push is recorded as failed
        hub.fail_next(401, message=f"Invalid credentials in Authorization header (token {TOKEN})")
        first: list[str] = []
        run_rounds(recipe, echo=first.append)
        after_first = json.loads((run_dir / "manifest.json").read_text())
        hub_after_first = sorted(str(p.relative_to(hub.root)) for p in hub.root.rglob("*") if p.is_file()) if hub.root.exists() else []
        # 2. the same command again: every stage is skipped, the push is retried and goes through
        second: list[str] = []
        run_rounds(recipe, echo=second.append)
        after_second = json.loads((run_dir / "manifest.json").read_text())
        commits = len(hub.commits)
        # 3. and once more: nothing left to do
        third: list[str] = []
        run_rounds(recipe, echo=third.append)
    return SimpleNamespace(
        run_dir=run_dir,
        hub=hub,
        first=first,
        second=second,
        third=third,
        after_first=after_first,
        after_second=after_second,
        hub_after_first=hub_after_first,
        commits=commits,
        recipe=recipe,
    )


@pytest.mark.slow
def test_a_failed_push_is_recorded_and_retried_by_the_next_run(published):
    first = published.after_first
    assert all(entry["finished"] for k in ("0", "1") for entry in first["rounds"][k].values())  # the round counts as finished
    failed = first["push"]["1"]
    assert failed["finished"] is False and failed["attempts"] == 1 and "HTTP 401" in failed["error"]
    assert TOKEN not in failed["error"] and "***" in failed["error"]
    assert any("push failed (attempt 1" in line and "HTTP 401" in line for line in published.first)
    assert not any(TOKEN in line for line in published.first + published.second + published.third)
    assert (published.run_dir / "rounds.json").is_file() and published.hub_after_first == []

    done = published.after_second["push"]["1"]
    assert done["finished"] is True and done["attempts"] == 2 and done["configs"] == {"ranked": "round_01", "trl": "round_01-trl"}
    assert done["files"] == ["neat-data/rounds.png", "neat-data/view.html", "README.md"] and "error" not in done
    assert any("round 1 · train: done" in line for line in published.second)
    assert any("pushed round_01, round_01-trl" in line for line in published.second)
    assert any("round 1 · push: done (round_01, round_01-trl), skipped" in line for line in published.third)
    assert len(published.hub.commits) == published.commits  # the third run pushed nothing


@pytest.mark.slow
def test_the_hub_holds_each_export_as_a_config_with_the_card_plot_and_page(published):
    repo = published.hub.repo("me/neat-run")
    folder = published.run_dir / "round_01"
    for config, fmt in (("round_01", "ranked"), ("round_01-trl", "trl")):
        shards = sorted((repo / config).glob("train-*.parquet"))
        assert len(shards) == 1
        assert pq.read_table(shards[0]).to_pylist() == pq.read_table(folder / "export" / fmt / "train.parquet").to_pylist()
    card = (repo / "README.md").read_text(encoding="utf-8")
    assert "config_name: round_01\n" in card and "config_name: round_01-trl" in card
    for section in ("round_01", "round_01-trl", "rounds"):
        assert card.count(f"<!-- neat-data:begin {section} -->") == 1
    table = (published.run_dir / "rounds.md").read_text(encoding="utf-8")
    assert table.strip() in card and "| 1 |" in card and "![rounds](neat-data/rounds.png)" in card
    assert "neat-data push " + str(folder) + " --repo-id me/neat-run --config-name round_01-trl --format trl" in card
    assert (repo / "neat-data" / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    assert (repo / "neat-data" / "view.html").read_bytes() == (published.run_dir / "view.html").read_bytes()
    assert published.hub.private["me/neat-run"] is True
    for where in (published.hub.root, published.run_dir):
        assert not [p for p in where.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_push_section_is_checked_and_is_not_part_of_the_run_identity(tmp_path: Path, tiny_model: Path):
    from neat_data.rounds.recipe import load_recipe, recipe_identity

    path = recipe_file(tmp_path, tiny_model, "http://127.0.0.1:9/v1")
    with_push = load_recipe(path)
    without = load_recipe(path, ["push="])
    assert with_push.push.repo_id == "me/neat-run" and with_push.push.private and without.push is None
    assert recipe_identity(with_push) == recipe_identity(without)  # publishing a finished run later is allowed
    with pytest.raises(NeatError, match="field 'push.repo_id'"):
        load_recipe(path, ["push.repo_id=not a repo"])
    with pytest.raises(NeatError, match="field 'push.token'"):
        load_recipe(path, ["push.token=hf_x"])  # a token in a recipe is refused: only the name of its variable


@pytest.mark.slow
@pytest.mark.skipif(missing() is not None, reason=f"needs a real browser: {missing()}")
def test_the_run_page_shows_rounds_metrics_and_heldout_answers(published):
    from neat_data.view import ViewConfig, build_view
    from neat_data.view.browser import launch, open_view

    run_dir = published.run_dir
    build_view(ViewConfig(run=run_dir))
    metrics = {k: json.loads((run_dir / f"round_{k:02d}" / "eval" / "metrics.json").read_text()) for k in (0, 1)}
    with launch() as browser:
        page = open_view(browser, run_dir / "view.html")
        page.click("#tabs button[data-tab='rounds']")
        rows = {
            row.get_attribute("data-metric"): row.locator("td").all_inner_texts() for row in page.locator("#rounds-table tbody tr").all()
        }
        for name in ("reward_mean", "perplexity", "prompts", "run.pairs", "run.train_tokens"):
            assert name in rows, sorted(rows)
        assert rows["reward_mean"][0] == "reward_mean (± reward_ci95)"
        for column, k in ((1, 0), (2, 1)):
            low, high = metrics[k]["reward_ci95"]
            assert rows["reward_mean"][column] == f"{metrics[k]['reward_mean']:.4f} [{low:.4f}, {high:.4f}]"
            assert rows["prompts"][column] == str(metrics[k]["prompts"])
        assert rows["win_rate_vs_base"][1] == "–" and rows["win_rate_vs_base"][2] == f"{metrics[1]['win_rate_vs_base']:.4f}"
        assert page.locator(".curves figure[data-metric='reward_mean'] svg circle").count() == 2
        assert page.locator(".curves figure[data-metric='reward_mean'] svg line").count() >= 2 + 2 * 3  # axes + an interval per round

        page.click("#tabs button[data-tab='heldout']")
        heldout = [json.loads(line)["prompt_id"] for line in (run_dir / "prompts" / "heldout.jsonl").read_text().splitlines()]
        shown = page.locator(".heldout-prompt")
        assert [p.get_attribute("data-pid") for p in shown.all()] == heldout
        labels = shown.first.locator(".heldout-cell h4").all_inner_texts()
        assert labels == ["base model", "base model, positive prompt (perplexity set)", "round 1"]
        for k, steering in ((0, "none"), (0, "pos"), (1, "none")):
            answers = {
                r["prompt_id"]: r["response"]
                for r in pq.read_table(run_dir / f"round_{k:02d}" / "eval" / "scored").to_pylist()
                if r["steering"] == steering and r["sample_index"] == 0
            }
            cell = shown.first.locator(f".heldout-cell[data-round='{k}'][data-steering='{steering}'] pre")
            assert cell.inner_text() == answers[heldout[0]]
        # the prompt list covers the training round
        page.click("#tabs button[data-tab='prompts']")
        assert page.locator("#prompt-list tbody tr").count() == 3 and page.locator("#f-round option").all_inner_texts() == [
            "any",
            "round 1",
        ]


@pytest.mark.slow
def test_the_run_page_shows_each_suites_answers_with_their_metric_values(published):
    from neat_data.view import ViewConfig, build_view
    from neat_data.view.browser import launch, open_view

    run_dir = published.run_dir
    build_view(ViewConfig(run=run_dir))
    heldout = {
        json.loads(line)["prompt_id"]: json.loads(line)["messages"][-1]["content"]
        for line in (run_dir / "prompts" / "heldout.jsonl").read_text().splitlines()
    }

    def measured(k: int, suite: str) -> dict[str, dict]:
        table = pq.read_table(run_dir / f"round_{k:02d}" / "eval" / "suites" / suite / "metrics.parquet")
        return {r["prompt_id"]: r for r in table.to_pylist() if r["sample_index"] == 0}

    with launch() as browser:
        page = open_view(browser, run_dir / "view.html")
        page.click("#tabs button[data-tab='heldout']")
        assert page.locator(".suite-section").evaluate_all("nodes => nodes.map(n => n.dataset.suite)") == ["benign", "harmbench-standard"]

        harmful = page.locator(".suite-section[data-suite='harmbench-standard']")
        chosen = [
            json.loads(line)
            for line in (run_dir / "round_00" / "eval" / "suites" / "harmbench-standard" / "prompts.jsonl").read_text().splitlines()
        ]
        prompts = harmful.locator(".suite-prompt")
        assert [p.get_attribute("data-pid") for p in prompts.all()] == [c["prompt_id"] for c in chosen] and len(chosen) == 3
        assert "a refusal here is wanted" in harmful.locator("p.note").first.inner_text()
        for n, record in enumerate(chosen):
            prompt = prompts.nth(n)
            assert prompt.locator(".turn pre").last.inner_text() == record["messages"][-1]["content"]
            assert prompt.locator(".suite-cell h4").all_inner_texts() == ["base model", "round 1"]
            for k in (0, 1):
                row = measured(k, "harmbench-standard")[record["prompt_id"]]
                cell = prompt.locator(f".suite-cell[data-round='{k}']")
                assert cell.locator("pre").inner_text() == row["response"]
                assert cell.locator("[data-metric='refusal']").inner_text() == ("refusal" if row["refusal"] == 1 else "no refusal")
                assert cell.locator("[data-metric='offensive']").inner_text() == f"offensive {row['offensive']:.2f}"

        benign = page.locator(".suite-section[data-suite='benign']")
        assert "over-refusal" in benign.locator("p.note").first.inner_text()
        shown = benign.locator(".suite-prompt")
        assert sorted(p.get_attribute("data-pid") for p in shown.all()) == sorted(heldout)
        first = shown.first  # a suite of held-out prompts has no prompts file: the conversation comes from the held-out split
        assert first.locator(".turn pre").last.inner_text() == heldout[first.get_attribute("data-pid")]
