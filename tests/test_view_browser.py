"""The view page in a real browser (headless Chromium from the system, driven by Playwright): type a search,
apply filters, open prompts, and check what is shown against the run's tables; markup in the data is text.

Skipped, with how to get a browser, where Playwright or Chromium is missing (`bash scripts/setup.sh` as root
installs Chromium with apt-get; Playwright comes from requirements/view.txt).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO
from view_runs import MARKUP, QUESTIONS, kept_pairs, make_stage_run, scored_rows

from neat_data.view import ViewConfig, build_view
from neat_data.view.browser import missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"needs a real browser: {missing()}")


@pytest.fixture(scope="module")
def browser():
    from neat_data.view.browser import launch

    with launch() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("view-browser")
    return {"new": make_stage_run(root / "new", dropped_table=True), "old": make_stage_run(root / "old", dropped_table=False)}


def open_page(browser, run: Path, **context_options):
    from neat_data.view.browser import open_view

    build_view(ViewConfig(run=run))
    if not context_options:
        page = open_view(browser, run / "view.html")
    else:
        context = browser.new_context(**context_options)
        page = context.new_page()
        page.goto((run / "view.html").resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']", state="attached")
    page.wait_for_selector("body[data-texts='1']", state="attached")
    return page


def list_titles(page) -> list[str]:
    return [text.strip() for text in page.locator("#prompt-list tbody td.title").all_inner_texts()]


def change(page, action) -> None:
    """Do something to the filters, then wait until the list shows it (the page sets body[data-settled])."""
    action()
    page.wait_for_selector("body[data-settled='1']", state="attached")


def cards(page) -> list[dict[str, str]]:
    """The open prompt's response cards: steering, key, meta line, text, reason."""
    out = []
    for card in page.locator("#detail .response").all():
        text = card.locator("pre")
        reason = card.locator(".reason")
        out.append(
            {
                "steering": card.get_attribute("data-steering"),
                "meta": card.locator(".meta").inner_text(),
                "key": card.locator(".note").last.inner_text().removeprefix("key "),
                "text": text.inner_text() if text.count() else None,
                "reason": reason.inner_text() if reason.count() else None,
                "dim": "dim" in (card.get_attribute("class") or ""),
            }
        )
    return out


def test_search_filters_and_a_prompt_show_what_the_tables_hold(browser, runs):
    run = runs["new"]
    rows = scored_rows(run)
    page = open_page(browser, run)
    assert list_titles(page) == QUESTIONS and page.locator("#list-count").inner_text() == "6 prompts match (of 6)"

    # search: prompt and response text, case-insensitive
    change(page, lambda: page.fill("#search", "CAPITAL"))
    assert list_titles(page) == ["What is the capital of France?"]
    change(page, lambda: page.fill("#search", "story that went"))  # only in the responses of the [[long]] prompt
    assert list_titles(page) == ["Write a long story. [[long]]"]
    change(page, lambda: page.fill("#search", ""))

    # status filter → the prompt whose requests failed; its cards show the reason
    change(page, lambda: page.select_option("#f-status", "generation error"))
    assert list_titles(page) == ["Tell me a joke. [[fail]]"]
    page.locator("#prompt-list tbody tr").first.click()
    page.wait_for_selector("#detail .response")
    shown = cards(page)
    assert len(shown) == 4 and all(c["reason"] == "generation error: HTTP 500 after 6 attempts" and c["text"] is None for c in shown)
    change(page, lambda: page.select_option("#f-status", "score error"))
    assert list_titles(page) == ["Rate this. [[noscore]]"]
    change(page, lambda: page.click("#f-clear"))

    # truncated (finish "length")
    change(page, lambda: page.check("#f-truncated"))
    assert list_titles(page) == ["Write a long story. [[long]]"]
    page.locator("#prompt-list tbody tr").first.click()
    page.wait_for_selector("#detail .response")
    assert all("finish length" in c["meta"] and "truncated" in c["meta"] for c in cards(page))
    change(page, lambda: page.click("#f-clear"))

    # steering + score range: prompts with a negative-prompt response scored ≥ 5, computed from the table
    change(page, lambda: page.select_option("#f-steering", label="neg (negative prompt)"))
    change(page, lambda: page.fill("#f-score-min", "5"))
    expected = [
        q
        for q in QUESTIONS
        if any(r["prompt"][-1]["content"] == q and r["steering"] == "neg" and r["score"] is not None and r["score"] >= 5 for r in rows)
    ]
    assert list_titles(page) == expected and 0 < len(expected) < 6
    change(page, lambda: page.click("#f-clear"))

    # sort by margin: the first prompt has the largest kept margin; its chosen/rejected marks sit on the right cards
    pairs = kept_pairs(run)
    best = max(pairs, key=lambda p: p["score_chosen"] - p["score_rejected"])
    change(page, lambda: page.select_option("#sort", "margin-desc"))
    first_title = list_titles(page)[0]
    assert first_title == best["prompt"][-1]["content"]
    page.locator("#prompt-list tbody tr").first.click()
    page.wait_for_selector("#detail .response")
    shown = {c["key"]: c for c in cards(page)}
    assert "chosen · pair 1" in shown[best["key_chosen"]]["meta"] and "rejected · pair 1" in shown[best["key_rejected"]]["meta"]
    by_key = {r["key"]: r for r in rows}
    for key, card in shown.items():  # every number on a card is the table's
        row = by_key[key]
        assert f"score {row['score']:.4f}" in card["meta"] or f"score {int(row['score'])}" in card["meta"]
        assert f"tokens {row['completion_tokens']}" in card["meta"] and f"finish {row['finish_reason']}" in card["meta"]
        assert card["text"] == row["response"]
    assert page.locator("#detail .system.pos pre").inner_text() == next(
        r["system_prompt"]
        for r in rows
        if r["key"] == best["key_chosen"] or (r["prompt_id"] == best["prompt_id"] and r["steering"] == "pos")
    )

    # dropped pairs: filter by reason, and the two sides are marked
    dropped = pq.read_table(run / "ranked" / "dropped.parquet").to_pylist()
    margin_drops = [d for d in dropped if d["reason"] == "margin"]
    change(page, lambda: page.select_option("#f-drop", label="margin"))
    titles = {r["prompt_id"]: r["prompt"][-1]["content"] for r in rows}
    assert sorted(list_titles(page)) == sorted(titles[d["prompt_id"]] for d in margin_drops) and margin_drops
    page.locator("#prompt-list tbody tr").first.click()
    page.wait_for_selector("#detail .response")
    drop = next(d for d in margin_drops if titles[d["prompt_id"]] == list_titles(page)[0])
    shown = {c["key"]: c for c in cards(page)}
    assert "dropped pair 1: margin" in shown[drop["key_chosen"]]["meta"] and "dropped pair 1: margin" in shown[drop["key_rejected"]]["meta"]


def test_overview_charts_count_what_matches(browser, runs):
    page = open_page(browser, runs["new"])

    def chart_texts(name: str) -> list[str]:
        return page.locator(f"#chart-{name} svg text").all_text_contents()

    status = chart_texts("status")
    assert "positive prompt" in status and "negative prompt" in status and status.count("12") == 2  # 6 prompts × 2 each
    assert any(t.startswith("pos n=8 ") for t in chart_texts("scores"))  # 12 − 2 generation errors − 2 score errors
    pairs = chart_texts("pairs")
    kept = len(kept_pairs(runs["new"]))
    margin = sum(1 for d in pq.read_table(runs["new"] / "ranked" / "dropped.parquet").to_pylist() if d["reason"] == "margin")
    assert pairs[pairs.index("kept") - 1] == str(kept) or str(kept) in pairs
    assert "margin" in pairs and str(margin) in pairs
    change(page, lambda: page.select_option("#f-steering", label="neg (negative prompt)"))
    status = chart_texts("status")
    assert "positive prompt" not in status and "negative prompt" in status


def test_markup_in_the_data_is_shown_as_text_and_never_runs(browser, runs):
    dialogs: list[str] = []
    # with the page's Content-Security-Policy, and without it: the page itself never turns data into markup
    for options in ({}, {"bypass_csp": True}):
        page = open_page(browser, runs["new"], **options)
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        assert "Show me <i>some</i> HTML please." in list_titles(page)
        change(page, lambda page=page: page.fill("#search", "window.__pwned"))
        assert list_titles(page) == ["Show me <i>some</i> HTML please."]
        page.locator("#prompt-list tbody tr").first.click()
        page.wait_for_selector("#detail .response")
        texts = [c["text"] for c in cards(page)]
        assert texts.count(MARKUP) == 2  # sample 0 under both system prompts
        assert page.locator("#detail .turn pre").first.inner_text() == "Show me <i>some</i> HTML please."
        assert page.locator("#detail img, #detail script, #prompt-list img, #prompt-list script").count() == 0
        assert page.locator("#detail pre *:not(mark), #prompt-list td.title *:not(mark)").count() == 0  # text, and our <mark>s
        assert page.locator("#detail mark").count() >= 2  # the search hit, highlighted as a node around text
        assert page.evaluate("window.__pwned === undefined") and not dialogs


def test_the_page_requests_nothing_but_itself(browser, runs):
    from neat_data.view.browser import CHROMIUM_ARGS  # noqa: F401  (the flags that keep Chromium itself quiet)

    build_view(ViewConfig(run=runs["new"]))
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto((runs["new"] / "view.html").resolve().as_uri())
    page.wait_for_selector("body[data-texts='1']", state="attached")
    page.locator("#prompt-list tbody tr").nth(2).click()
    page.wait_for_selector("#detail .response")
    assert requests == [(runs["new"] / "view.html").resolve().as_uri()]


def test_an_older_run_without_dropped_table_shows_the_manifest_counts(browser, runs):
    import json

    page = open_page(browser, runs["old"])
    assert page.locator("#f-drop").is_disabled()
    summary = json.loads((runs["old"] / "manifest.json").read_text())["stages"]["rank"]["summary"]["dropped"]
    assert summary  # the fixture's margin drops
    note = page.locator("#chart-pairs .note").inner_text()
    assert "whole-run counts from the rank summary" in note
    pairs = page.locator("#chart-pairs svg text").all_text_contents()
    for reason, count in summary.items():
        assert reason in pairs and str(count) in pairs
    page.locator("#prompt-list tbody tr").first.click()
    page.wait_for_selector("#detail .response")
    assert ", ".join(f"{k} {v}" for k, v in summary.items()) in page.locator("#detail").inner_text()


def test_served_page_fetches_texts_and_searches_on_the_server(browser, runs):
    from neat_data.view.browser import open_view
    from neat_data.view.serve import ViewServer

    server = ViewServer(ViewConfig(run=runs["new"], max_chars=100), port=0).start()  # max_chars: embedded pages only
    try:
        page = open_view(browser, server.url)
        assert list_titles(page) == QUESTIONS
        change(page, lambda: page.fill("#search", "STORY that"))
        assert list_titles(page) == ["Write a long story. [[long]]"]
        page.locator("#prompt-list tbody tr").first.click()
        page.wait_for_selector("#detail .response pre")
        rows = {r["key"]: r for r in scored_rows(runs["new"])}
        shown = cards(page)
        assert shown and all(c["text"] == rows[c["key"]]["response"] and len(c["text"]) > 100 for c in shown)  # full length
        assert page.locator("#detail .cut").count() == 0
    finally:
        server.stop()


def test_screenshot_script_writes_a_png(runs, tmp_path: Path):
    out = tmp_path / "view.png"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "screenshot_view.py"),
            str(runs["new"]),
            str(out),
            "--rebuild",
            "--width",
            "1200",
            "--height",
            "900",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1200, 900)
    assert re.search(r"view\.html: .* 6 prompts", done.stdout)


def test_suite_answers_with_odd_metric_files_are_shown_or_named_never_a_crash(browser, tmp_path: Path):
    """Hand-edited or cut-short suite files: a missing metric value reads "–" (not "no refusal"), a yes/no metric
    stored as bool counts, text columns are not metrics, a file without the answer columns or cut short is named on
    the page, and markup in an answer stays text."""
    import pyarrow as pa

    run = tmp_path / "odd"
    suites = {k: run / f"round_{k:02d}" / "eval" / "suites" / "locks" for k in (0, 1, 2, 3)}
    for folder in suites.values():
        folder.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "prompt_id": ["p1", "p2"],
                "sample_index": pa.array([0, 0], pa.int32()),
                "response": ["<img src=x onerror=window.pwned=1>", "fine"],
                "finish_reason": ["stop", "length"],
                "refusal": [float("nan"), 1.0],
                "offensive": [0.25, None],
                "note": ["a string column", "is not a metric"],
            }
        ),
        suites[0] / "metrics.parquet",
    )
    pq.write_table(pa.table({"sample_index": [0], "response": ["no prompt ids"]}), suites[1] / "metrics.parquet")
    good = pa.table({"prompt_id": ["p1"], "sample_index": [0], "response": ["I cannot help"], "refusal": [True]})
    pq.write_table(good, suites[2] / "metrics.parquet")
    whole = (suites[2] / "metrics.parquet").read_bytes()
    (suites[2] / "metrics.parquet").write_bytes(whole[: len(whole) // 2])  # cut short
    pq.write_table(good, suites[3] / "metrics.parquet")
    (run / "round_00" / "eval" / "suites" / "locks" / "prompts.jsonl").write_text(
        '{"prompt_id": "p1", "messages": [{"role": "user", "content": "open the lock"}]}\n', encoding="utf-8"
    )

    page = open_page(browser, run)
    page.click("#tabs button[data-tab='heldout']")
    section = page.locator(".suite-section[data-suite='locks']")
    notes = section.locator("p.reason").all_inner_texts()
    assert notes == [
        "round 1: round_01/eval/suites/locks/metrics.parquet has no string column 'prompt_id'; its answers are not shown",
        f"round 2: round_02/eval/suites/locks/metrics.parquet cannot be read ({notes[1].split('(', 1)[1]}",
    ]
    assert [p.get_attribute("data-pid") for p in section.locator(".suite-prompt").all()] == ["p1", "p2"]
    first, second = section.locator(".suite-prompt").nth(0), section.locator(".suite-prompt").nth(1)
    assert first.locator(".turn pre").inner_text() == "open the lock"
    assert first.locator(".suite-cell h4").all_inner_texts() == ["base model", "round 3"]
    assert first.locator(".suite-cell[data-round='0'] [data-metric='refusal']").inner_text() == "refusal –"
    assert first.locator(".suite-cell[data-round='0'] [data-metric='offensive']").inner_text() == "offensive 0.25"
    assert first.locator(".suite-cell[data-round='3'] [data-metric='refusal']").inner_text() == "refusal"  # stored as bool
    assert first.locator(".suite-cell[data-round='0'] pre").inner_text() == "<img src=x onerror=window.pwned=1>"
    assert page.evaluate("window.pwned") is None
    assert second.locator(".suite-cell[data-round='0'] [data-metric='refusal']").inner_text() == "refusal"
    assert second.locator(".suite-cell[data-round='0'] [data-metric='offensive']").inner_text() == "offensive –"
    assert "no measured answer" in second.locator(".suite-cell[data-round='3']").inner_text()
    assert section.locator("[data-metric='note']").count() == 0
