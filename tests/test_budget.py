"""Cost before spending: `generate --dry-run` (plans, counts, prices, writes nothing) and the --max-cost /
--max-total-tokens caps (stop cleanly, resume with a higher cap, every row answered exactly once — the fake server's
own request log is the evidence)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import served_generate_args, write_jsonl

from neat_data.cli import cli
from neat_data.core.manifest import read_manifest


def prompts(folder: Path, count: int) -> Path:
    return write_jsonl(folder / "prompts.jsonl", [{"prompt": f"Question number {i}: how do I do thing {i}?"} for i in range(count)])


def rows_of(run: Path) -> list[dict]:
    return [row for path in sorted((run / "generations").glob("part-*.parquet")) for row in pq.read_table(path).to_pylist()]


def test_dry_run_with_the_models_tokenizer_counts_what_the_engine_then_counts_and_writes_nothing(tmp_path: Path, tiny_model: Path):
    source = prompts(tmp_path, 3)
    run = tmp_path / "run"
    args = ["generate", "--prompts", str(source), "--model", str(tiny_model), "--backend", "transformers", "--out", str(run)]
    args += ["--num-pos", "2", "--num-neg", "1", "--max-tokens", "4", "--price-in", "1000", "--price-out", "4000", "--no-progress"]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not run.exists()  # nothing written
    lines = result.output.strip().splitlines()
    # 3 prompts × (pos, neg) = 6 requests, 3 × (2 + 1) = 9 rows
    assert lines[0].startswith("dry run (nothing written, nothing sent): 6 requests → 9 rows for 3 prompts")
    counted = int(lines[1].split("prompt tokens: ")[1].split(" ")[0].replace(",", ""))
    assert lines[1].endswith("(counted with the model's tokenizer and chat template); completion tokens: at most 36 (rows × max_tokens)")
    prompt_cost, completion_cost = counted * 1000 / 1e6, 36 * 4000 / 1e6
    assert (
        lines[2]
        == f"cost: {prompt_cost:.4f} for the prompts + at most {completion_cost:.4f} for the completions = at most {prompt_cost + completion_cost:.4f}"
    )
    # the real run: the engine's own prompt-token count of each request is what the dry run counted
    assert CliRunner().invoke(cli, args).exit_code == 0
    per_request = {(r["prompt_id"], r["steering"]): r["prompt_tokens"] for r in rows_of(run)}
    assert len(per_request) == 6 and sum(per_request.values()) == counted


def test_dry_run_without_a_tokenizer_says_it_estimates_and_skips_done_rows(tmp_path: Path, fake_server):
    server = fake_server()
    source, run = prompts(tmp_path, 4), tmp_path / "run"
    assert CliRunner().invoke(cli, served_generate_args(source, server.url, run, limit=2)).exit_code == 0
    sent = len(server.requests)
    result = CliRunner().invoke(cli, [*served_generate_args(source, server.url, run), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "4 requests → 4 rows for 4 prompts on served (openai); 4 rows already done" in result.output
    assert "an estimate (~4 characters per token, no tokenizer at hand)" in result.output
    assert len(server.requests) == sent and len(rows_of(run)) == 4  # nothing sent, nothing written


def test_max_total_tokens_stops_resumes_and_answers_every_row_once(tmp_path: Path, fake_server):
    server = fake_server()
    source, run = prompts(tmp_path, 30), tmp_path / "run"  # 30 prompts × (pos, neg) = 60 requests of n = 1
    first = CliRunner().invoke(cli, served_generate_args(source, server.url, run, max_concurrency=1, max_total_tokens=400))
    assert first.exit_code == 0, first.output
    assert "stopped at the budget --max-total-tokens 400" in first.output
    sent = len(server.requests)
    budget = read_manifest(run).stage("generate").entry()["budget"]
    rows = rows_of(run)
    assert 0 < sent < 60 and len(rows) == sent and budget["unsent_requests"] == 60 - sent and budget["stopped"]
    # the cap was reached by the last request: at concurrency 1 nothing else was in flight, and nothing was read ahead
    billed = [sum(len(str(m["content"]).split()) for m in body["messages"]) + 5 for body in server.requests]
    assert budget["spent_tokens"] == sum(billed) >= 400 and sum(billed[:-1]) < 400
    # the same cap again: already reached, nothing is sent
    again = CliRunner().invoke(cli, served_generate_args(source, server.url, run, max_concurrency=1, max_total_tokens=400))
    assert again.exit_code == 0 and len(server.requests) == sent
    # a higher cap: the rest, and only the rest
    rest = CliRunner().invoke(cli, served_generate_args(source, server.url, run, max_concurrency=1, max_total_tokens=100_000))
    assert rest.exit_code == 0, rest.output
    assert "stopped at the budget" not in rest.output
    assert len(server.requests) == 60
    asked = Counter(json.dumps(body["messages"], sort_keys=True) for body in server.requests)
    assert set(asked.values()) == {1}  # no request was paid twice
    final = rows_of(run)
    assert len(final) == 60 and len({r["key"] for r in final}) == 60 and all(r["status"] == "ok" for r in final)
    assert final[: len(rows)] == rows  # the first pass's rows are untouched
    spent = read_manifest(run).stage("generate").entry()["budget"]
    assert spent["spent_tokens"] == sum(sum(len(str(m["content"]).split()) for m in b["messages"]) + 5 for b in server.requests)
    assert spent["unsent_requests"] == 0 and not spent["stopped"]


def test_max_cost_needs_prices_and_caps_must_be_positive(tmp_path: Path, fake_server):
    server = fake_server()
    source, run = prompts(tmp_path, 2), tmp_path / "run"
    for extra, fragment in (
        (["--max-cost", "0.01"], "--max-cost needs --price-in and --price-out"),
        (["--max-cost", "-1", "--price-in", "1", "--price-out", "1"], "option 'max_cost': Input should be greater than 0"),
        (["--max-total-tokens", "0"], "option 'max_total_tokens': Input should be greater than or equal to 1"),
    ):
        result = CliRunner().invoke(cli, [*served_generate_args(source, server.url, run), *extra])
        assert result.exit_code == 2 and fragment in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not server.requests and not run.exists()


def test_max_cost_stops_on_the_priced_spend(tmp_path: Path, fake_server):
    server = fake_server()
    source, run = prompts(tmp_path, 30), tmp_path / "run"
    # prices 1000 / 1000 per 1M tokens: a request of ~40 tokens costs ~0.04; cap 0.5 → stops after ~13 answered
    args = served_generate_args(source, server.url, run, max_concurrency=1, price_in=1000, price_out=1000, max_cost=0.5)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "stopped at the budget --max-cost 0.5" in result.output, result.output
    budget = read_manifest(run).stage("generate").entry()["budget"]
    billed = [sum(len(str(m["content"]).split()) for m in body["messages"]) + 5 for body in server.requests]
    assert budget["spent_cost"] == round(sum(billed) * 1000 / 1e6, 6) and budget["spent_cost"] >= 0.5
    assert len(rows_of(run)) == len(server.requests) < 60


def billed_tokens(server) -> list[int]:
    """What the fake server billed each request it answered (prompt words + 5 per completion), in arrival order."""
    return [sum(len(str(m["content"]).split()) for m in body["messages"]) + 5 * int(body.get("n") or 1) for body in server.requests]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_cap_is_passed_by_at_most_what_was_in_flight(tmp_path: Path, fake_server, concurrency: int):
    """The backend used to read 2 × concurrency (at least 16) requests ahead of the answers the budget had counted: a
    300-token cap at concurrency 1 spent ~900. Now a request is handed over only once every answer is counted."""
    server = fake_server()
    source, run = prompts(tmp_path, 40), tmp_path / "run"
    args = served_generate_args(source, server.url, run, max_concurrency=concurrency, max_total_tokens=300)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "stopped at the budget --max-total-tokens 300" in result.output, result.output
    billed = billed_tokens(server)
    # the answers counted before the cap was reached: all but those in flight then (at most `concurrency`, any of them)
    assert sum(billed) >= 300 and sum(billed) - sum(sorted(billed)[-concurrency:]) < 300
    assert read_manifest(run).stage("generate").entry()["budget"]["spent_tokens"] == sum(billed) and len(rows_of(run)) == len(billed)


def test_a_cap_the_server_gives_no_usage_for_stops_at_the_first_answer_with_one_line(tmp_path: Path, fake_server):
    """A server that answers without `usage` made every cap silently count 0 tokens: all 40 requests were sent."""
    server = fake_server(omit_usage=True)
    source, run = prompts(tmp_path, 20), tmp_path / "run"
    result = CliRunner().invoke(cli, served_generate_args(source, server.url, run, max_concurrency=1, max_total_tokens=100_000))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0] == (
        "error: option 'max_total_tokens': --max-total-tokens cannot be counted: the server answered 1 request without token "
        "usage; stopped there (39 requests not sent, the answered rows are kept); run without the cap"
    )
    assert len(server.requests) == 1 and len(rows_of(run)) == 1  # what was answered is kept
    budget = read_manifest(run).stage("generate").entry()["budget"]
    assert budget["unsent_requests"] == 39
    # without the cap the same command generates the rest
    assert CliRunner().invoke(cli, served_generate_args(source, server.url, run)).exit_code == 0 and len(rows_of(run)) == 40


def test_a_batch_backend_refuses_a_cap_up_front(tmp_path: Path, fake_server):
    server = fake_server()
    source, run = prompts(tmp_path, 2), tmp_path / "run"
    for backend in ("openai-batch", "vllm-batch"):
        args = [*served_generate_args(source, server.url, run, max_total_tokens=1000), "--backend", backend]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"--max-cost / --max-total-tokens cannot be counted with backend '{backend}'" in result.output
    assert not server.requests and not server.batch_api.batches and not run.exists()


def test_answers_without_usage_in_an_earlier_pass_make_a_later_cap_uncountable(tmp_path: Path, fake_server):
    """A pass without a cap against a server that gave no usage recorded a spend of 0: a capped resume then counted
    from 0 and sent more (20 answers earlier, unknown tokens). Now it is the same one line as a first answer without usage."""
    server = fake_server(omit_usage=True)
    source, run = prompts(tmp_path, 20), tmp_path / "run"
    assert CliRunner().invoke(cli, served_generate_args(source, server.url, run, max_concurrency=1, limit=10)).exit_code == 0
    server.settings.omit_usage = False
    result = CliRunner().invoke(cli, served_generate_args(source, server.url, run, max_concurrency=1, max_total_tokens=100_000))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "--max-total-tokens cannot be counted: the server answered 20 requests without token usage" in lines[0]
    assert len(server.requests) == 20 and len(rows_of(run)) == 20  # nothing more sent; the rows are kept


def test_max_cost_counts_an_earlier_unpriced_spend_at_this_commands_prices(tmp_path: Path, fake_server):
    """A pass without prices recorded its spend as cost 0: a resume with --max-cost then counted from 0 and sent more,
    though the folder had already spent past the cap at those prices."""
    server = fake_server()
    source, run = prompts(tmp_path, 20), tmp_path / "run"
    assert CliRunner().invoke(cli, served_generate_args(source, server.url, run, max_concurrency=1, limit=10)).exit_code == 0
    spent = sum(billed_tokens(server))
    priced = served_generate_args(source, server.url, run, max_concurrency=1, price_in=1000, price_out=1000)
    result = CliRunner().invoke(cli, [*priced, "--max-cost", str(spent / 1000 - 0.01)])
    assert result.exit_code == 0 and f"(spent {spent / 1000:.4f}): 20 requests not sent" in result.output, result.output
    assert len(server.requests) == 20  # the cap was passed already: nothing sent
    assert read_manifest(run).stage("generate").entry()["budget"]["spent_cost"] == round(spent / 1000, 6)


def test_the_ray_backend_refuses_a_cap_up_front(tmp_path: Path, fake_server):
    """Ray builds its dataset from every request before the first answer: a cap was never checked in between."""
    server = fake_server()
    source, run = prompts(tmp_path, 2), tmp_path / "run"
    result = CliRunner().invoke(cli, [*served_generate_args(source, server.url, run, max_total_tokens=1000), "--backend", "ray"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--max-cost / --max-total-tokens cannot be counted with backend 'ray'" in result.output
    assert not run.exists()


def test_a_request_whose_calls_report_usage_only_in_part_is_uncounted(tmp_path: Path, fake_server):
    """A server that ignores n is asked once per missing sample; when some of those answers carried usage and others
    did not, the request counted only the part reported, as if complete: a cap silently under-counted and went on."""
    server = fake_server(ignore_n=True, rates={"nousage": 0.3}, seed=3)
    source, run = prompts(tmp_path, 20), tmp_path / "run"
    args = served_generate_args(source, server.url, run, num_pos=2, num_neg=2, max_concurrency=1, max_total_tokens=100_000)
    result = CliRunner().invoke(cli, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "cannot be counted: the server answered 1 request without token usage" in lines[0]
    # the run stopped at the first request (2 calls, one per sample) with an answer that carried no usage
    assert len(server.requests) % 2 == 0 and server.faults["nousage"] in (1, 2), (len(server.requests), server.faults)


def test_the_dry_run_says_when_the_folders_spend_has_reached_the_cap(tmp_path: Path, fake_server):
    """The dry run of a folder whose cap was reached planned every missing request and never mentioned the cap, while
    the same command sends nothing."""
    server = fake_server()
    source, run = prompts(tmp_path, 20), tmp_path / "run"
    args = served_generate_args(source, server.url, run, max_concurrency=1, max_total_tokens=200)
    assert "stopped at the budget" in CliRunner().invoke(cli, args).output
    sent, spent = len(server.requests), sum(billed_tokens(server))
    dry = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert dry.exit_code == 0 and dry.output.strip().splitlines()[-1] == (
        f"budget: --max-total-tokens 200 (spent {spent:,}): reached already, the run sends nothing; a higher cap continues"
    ), dry.output
    higher = CliRunner().invoke(cli, [*args[:-2], "--max-total-tokens", "100000", "--dry-run"])
    assert higher.output.strip().splitlines()[-1] == (
        f"budget: --max-total-tokens 100,000 (spent {spent:,}): the run stops sending once it is reached"
    ), higher.output
    assert CliRunner().invoke(cli, args).exit_code == 0 and len(server.requests) == sent  # the run: nothing sent indeed
