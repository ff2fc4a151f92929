"""What `neat-data view` puts in the page, checked against the run's tables read back by hand (no browser here;
tests/test_view_browser.py drives the page itself in Chromium)."""

from __future__ import annotations

import base64
import gzip
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from view_runs import MARKUP, QUESTIONS, kept_pairs, make_stage_run, prompt_title, ranks, scored_rows

from neat_data.cli import cli
from neat_data.core.errors import NeatError
from neat_data.view import ViewConfig, build_view
from neat_data.view.collect import RunContents
from neat_data.view.rounds_data import flatten_metrics, interval_owner


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory) -> Path:
    return make_stage_run(tmp_path_factory.mktemp("view") / "run", dropped_table=True)


def page_blocks(html: str) -> tuple[dict, dict | None]:
    """The page's two data blocks, decoded the way the page decodes them (base64 → gzip → JSON)."""

    def block(name: str):
        encoded = re.search(rf'<script type="application/octet-stream" id="{name}">([^<]*)</script>', html).group(1)
        return json.loads(gzip.decompress(base64.b64decode(encoded))) if encoded else None

    return block("data-index"), block("data-texts")


def test_the_index_holds_every_row_as_the_tables_say(stage_run: Path):
    index = RunContents(stage_run).index(np.ones(len(QUESTIONS), bool), mode="embedded")
    P, R, S = index["prompts"], index["responses"], index["strings"]
    rows = {r["key"]: r for r in scored_rows(stage_run)}
    assert len(R["key"]) == len(rows) == 6 * 4 and sorted(R["key"]) == sorted(rows)
    assert [prompt_title(rows[R["key"][P["r0"][p]]]) for p in range(len(P["pid"]))] == QUESTIONS  # run order
    rank_of = ranks(stage_run)
    for r, key in enumerate(R["key"]):
        row = rows[key]
        assert (
            P["pid"][R["p"][r]] == row["prompt_id"] and S["steering"][R["st"][r]] == row["steering"] and R["si"][r] == row["sample_index"]
        )
        assert R["score"][r] == row["score"] and R["raw"][r] == row["raw_score"] and R["tok"][r] == row["completion_tokens"]
        assert R["gs"][r] == (row["status"] == "error") and S["score_state"][R["ss"][r]] == row["score_status"]
        assert (S["fin"][R["fin"][r]] if R["fin"][r] >= 0 else None) == row["finish_reason"]
        assert R["len"][r] == len(row["response"] or "") and R["rank"][r] == rank_of.get(key, 0)
        assert R["err"][r] == (row["error"] or row["score_error"])
    # each prompt's rows are contiguous: pos then neg, by sample index
    for p in range(len(P["pid"])):
        group = [(R["st"][r], R["si"][r]) for r in range(P["r0"][p], P["r0"][p] + P["rn"][p])]
        assert group == sorted(group) and {R["p"][r] for r in range(P["r0"][p], P["r0"][p] + P["rn"][p])} == {p}
    # the drawn pair's two system prompts, as the rows recorded them
    for p in range(len(P["pid"])):
        for steering, column in (("pos", "sys_pos"), ("neg", "sys_neg")):
            texts = {r["system_prompt"] for r in rows.values() if r["prompt_id"] == P["pid"][p] and r["steering"] == steering}
            assert {S["sys"][P[column][p]]} == texts
    # kept pairs point at the chosen and rejected rows, with the tables' margin
    pairs = kept_pairs(stage_run)
    assert len(index["kept"]["p"]) == len(pairs) >= 1
    for i, pair in enumerate(pairs):
        assert R["key"][index["kept"]["c"][i]] == pair["key_chosen"] and R["key"][index["kept"]["r"][i]] == pair["key_rejected"]
        assert index["kept"]["m"][i] == pytest.approx(pair["score_chosen"] - pair["score_rejected"])
    dropped = index["dropped"]
    import pyarrow.parquet as pq

    table = pq.read_table(stage_run / "ranked" / "dropped.parquet").to_pylist()
    assert len(table) >= 1 and [S["drop"][x] for x in dropped["reason"]] == [d["reason"] for d in table]
    assert [R["key"][a] for a in dropped["a"]] == [d["key_chosen"] for d in table]
    # the whole-run totals: 6 prompts × 4, the [[fail]] prompt's 4 rows are generation errors, [[noscore]]'s 4 score errors
    totals = index["totals"][0]["responses"]
    assert totals["pos"] == {"ok": 8, "generation error": 2, "score error": 2} and totals["neg"] == totals["pos"]
    assert index["sample"] is None and index["rounds"] is None and index["run"]["kind"] == "stage"


def test_page_embeds_all_texts_and_says_what_it_sampled(stage_run: Path, tmp_path: Path):
    summary = build_view(ViewConfig(run=stage_run, out=tmp_path / "all.html"))
    index, texts = page_blocks((tmp_path / "all.html").read_text(encoding="utf-8"))
    rows = {r["key"]: r for r in scored_rows(stage_run)}
    assert [texts["resp"][r] for r in range(len(index["responses"]["key"]))] == [rows[k]["response"] for k in index["responses"]["key"]]
    assert MARKUP in texts["resp"] and texts["conv"][0] == [["user", QUESTIONS[0]]]
    assert summary.prompts == summary.prompts_total == 6 and summary.bytes == (tmp_path / "all.html").stat().st_size
    # with room for 9 responses: two whole prompts (8 rows), the same ones on every build, and the page says so
    small = build_view(ViewConfig(run=stage_run, out=tmp_path / "small.html", max_responses=9))
    index, texts = page_blocks((tmp_path / "small.html").read_text(encoding="utf-8"))
    assert index["sample"] == {"prompts": 2, "prompts_total": 6, "responses": 8, "responses_total": 24}
    assert small.line().endswith("s") and "sampled: 2 of 6 prompts" in small.line()
    assert index["prompts"]["rn"] == [4, 4] and len(texts["resp"]) == 8
    build_view(ViewConfig(run=stage_run, out=tmp_path / "again.html", max_responses=9))
    assert page_blocks((tmp_path / "again.html").read_text(encoding="utf-8"))[0]["prompts"]["pid"] == index["prompts"]["pid"]
    assert sum(index["totals"][0]["responses"]["pos"].values()) == 12  # totals stay whole-run


def test_long_texts_are_cut_in_the_page_but_their_length_is_kept(stage_run: Path, tmp_path: Path):
    build_view(ViewConfig(run=stage_run, out=tmp_path / "cut.html", max_chars=100))
    index, texts = page_blocks((tmp_path / "cut.html").read_text(encoding="utf-8"))
    longest = max(range(len(texts["resp"])), key=lambda r: index["responses"]["len"][r])
    assert index["responses"]["len"][longest] > 100 and len(texts["resp"][longest]) == 100 and texts["cut"] == 100


def test_a_page_fits_its_size_limit(stage_run: Path, tmp_path: Path):
    whole = build_view(ViewConfig(run=stage_run, out=tmp_path / "whole.html"))
    two = build_view(ViewConfig(run=stage_run, out=tmp_path / "two.html", max_responses=9))
    limit = (whole.bytes + two.bytes) // 2  # room for more than two prompts, not for all six
    limited = build_view(ViewConfig(run=stage_run, out=tmp_path / "limited.html", max_mb=limit / 1e6))
    assert limited.bytes == (tmp_path / "limited.html").stat().st_size <= limit and 0 < limited.prompts < 6
    assert page_blocks((tmp_path / "limited.html").read_text(encoding="utf-8"))[0]["sample"]["prompts"] == limited.prompts
    with pytest.raises(NeatError, match="needs at least"):
        build_view(ViewConfig(run=stage_run, out=tmp_path / "tiny.html", max_mb=0.01))


def test_page_needs_no_network_and_keeps_data_out_of_markup(stage_run: Path, tmp_path: Path):
    build_view(ViewConfig(run=stage_run, out=tmp_path / "v.html"))
    html = (tmp_path / "v.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) and "<link" not in html and "@import" not in html
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "window.__pwned" not in html  # the markup response is inside the compressed block only
    assert html.count("<script") == 3  # two data blocks (never run) and the page's own script


def test_cli_view_writes_the_page_and_bad_folders_are_one_line_errors(stage_run: Path, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(cli, ["view", str(stage_run), "--out", str(tmp_path / "cli.html")])
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'cli.html'}: " in result.output and "6 prompts, 24 responses" in result.output
    assert page_blocks((tmp_path / "cli.html").read_text(encoding="utf-8"))[0]["run"]["name"] == "run"
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "empty", "nothing to view"), (tmp_path / "missing", "no such run folder")):
        result = runner.invoke(cli, ["view", str(folder)])
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    make_stage_run(broken, dropped_table=False)
    shard = next((broken / "scored").glob("part-*.parquet"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a truncated file
    result = runner.invoke(cli, ["view", str(broken)])
    assert result.exit_code == 2 and str(shard) in result.output and "Traceback" not in result.output


def test_every_numeric_metric_is_flattened_and_intervals_find_their_metric():
    metrics = {
        "model": "m",
        "prompts": 16,
        "reward_mean": 0.01,
        "reward_ci95": [-0.01, 0.03],
        "win_rate_vs_base": None,
        "perplexity": float("nan"),
        "config": {"bootstrap": 2000},
        "command": ["x"],
        "safety": {"harmbench": {"refusal_rate": {"mean": 0.5, "ci95": [0.4, 0.6]}, "n": 10, "flags": [True, False]}},
    }
    scalars, intervals = flatten_metrics(metrics)
    assert scalars == {
        "prompts": 16.0,
        "reward_mean": 0.01,
        "perplexity": None,
        "safety.harmbench.refusal_rate.mean": 0.5,
        "safety.harmbench.n": 10.0,
    }
    assert intervals == {"reward_ci95": [-0.01, 0.03], "safety.harmbench.refusal_rate.ci95": [0.4, 0.6]}
    assert interval_owner("reward_ci95", set(scalars)) == "reward_mean"
    assert interval_owner("safety.harmbench.refusal_rate.ci95", set(scalars)) == "safety.harmbench.refusal_rate.mean"
    assert interval_owner("other_ci95", set(scalars)) is None


def test_served_api_answers_texts_and_search_and_refuses_other_hosts(stage_run: Path):
    from neat_data.view.serve import ViewServer

    server = ViewServer(ViewConfig(run=stage_run), port=0).start()
    try:

        def get(path: str, host: str | None = None):
            request = urllib.request.Request(server.url + path, headers={"Host": host} if host else {})
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read()

        status, page = get("")
        index, texts = page_blocks(page.decode("utf-8"))
        assert status == 200 and index["mode"] == "served" and texts is None and len(index["prompts"]["pid"]) == 6
        assert "connect-src 'self'" in page.decode("utf-8")
        rows = {r["key"]: r for r in scored_rows(stage_run)}
        html_prompt = QUESTIONS.index("Show me <i>some</i> HTML please.")
        answer = json.loads(get(f"api/prompt?i={html_prompt}")[1])
        first, count = index["prompts"]["r0"][html_prompt], index["prompts"]["rn"][html_prompt]
        assert (
            answer["resp"] == [rows[k]["response"] for k in index["responses"]["key"][first : first + count]] and MARKUP in answer["resp"]
        )
        assert answer["conv"] == [["user", "Show me <i>some</i> HTML please."]]
        assert json.loads(get("api/search?q=CAPITAL%20of")[1])["prompts"] == [QUESTIONS.index("What is the capital of France?")]
        assert json.loads(get("api/search?q=" + urllib.request.quote("window.__pwned"))[1])["prompts"] == [html_prompt]
        assert json.loads(get("api/search?q=no%20such%20text")[1])["prompts"] == []
        for path in ("api/prompt?i=99", "api/prompt?i=x", "nothing"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                get(path)
        with pytest.raises(urllib.error.HTTPError, match="403"):
            get("", host="evil.example:80")
    finally:
        server.stop()


def test_retried_rows_supersede_their_error_rows_and_shard_folders_are_read(tmp_path: Path):
    import shutil

    import pyarrow.parquet as pq
    from view_runs import ScriptedBackend, reply

    from neat_data.engines.base import Sampling
    from neat_data.stages.generate.stage import GenerateConfig, run_generate

    run = make_stage_run(tmp_path / "run", dropped_table=False)
    config = GenerateConfig(
        prompts=str(tmp_path / "run-prompts.jsonl"),
        model="fake",
        out=run,
        num_pos=2,
        num_neg=2,
        sampling=Sampling(max_tokens=16),
        flush_every=1,
    )
    # the [[fail]] prompt's requests again, now answered; the process dies after the first one (before any compaction)
    with pytest.raises(RuntimeError, match="scripted crash"):
        run_generate(config, backend=ScriptedBackend(reply=reply, crash_after=1), retry_errors=True, progress=False)
    parts = sorted((run / "generations").glob("part-*.parquet"))
    assert len(parts) == 2  # the first run's rows (with the error rows), then the two retried rows
    # what `--num-shards` processes leave: parts in shard sub-folders
    for number, part in enumerate(parts):
        target = run / "generations" / f"shard-0000{number}-of-00002" / "part-000000.parquet"
        target.parent.mkdir()
        shutil.move(part, target)
    index = RunContents(run).index(np.ones(6, bool), mode="embedded")
    R, P = index["responses"], index["prompts"]
    failed = QUESTIONS.index("Tell me a joke. [[fail]]")
    rows = range(P["r0"][failed], P["r0"][failed] + P["rn"][failed])
    assert len(R["key"]) == 24 and len(set(R["key"])) == 24  # one row per key: the retry, not the error row
    retried = {
        key
        for key, status in zip(
            pq.read_table(parts[1].parent / "shard-00001-of-00002").column("key").to_pylist(),
            pq.read_table(parts[1].parent / "shard-00001-of-00002").column("status").to_pylist(),
        )
        if status == "ok"
    }
    assert len(retried) == 2
    assert sorted(R["gs"][r] for r in rows) == [0, 0, 1, 1] and {R["key"][r] for r in rows if R["gs"][r] == 0} == retried


def test_the_header_states_the_data_audit_verdicts(tmp_path: Path):
    run = make_stage_run(tmp_path / "run", dropped_table=True)
    audited = CliRunner().invoke(cli, ["audit", str(run), "--resamples", "100", "--duplicate-max", "0", "--near-duplicate-max", "1"])
    assert audited.exit_code == 0, audited.output
    report = json.loads((run / "audit" / "audit.json").read_text())
    failed = [c["check"] for c in report["checks"] if c["verdict"] == "fail"]
    unsure = [c["check"] for c in report["checks"] if c["verdict"] == "not sure"]
    build_view(ViewConfig(run=run, out=tmp_path / "page.html"))
    index, _ = page_blocks((tmp_path / "page.html").read_text(encoding="utf-8"))
    facts = dict(index["run"]["info"])
    said = "; ".join(f"{state}: {', '.join(sorted(checks))}" for state, checks in (("failed", failed), ("not sure", unsure)) if checks)
    count = len(report["checks"])
    expected = f"{said} (of {count} checks)" if said else f"all {count} checks pass or n/a"
    assert facts["audit"] == expected
