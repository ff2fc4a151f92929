"""Size and time to first render of `neat-data view` on a synthetic 100k-row run (not a timed test).

A run folder is built from the schemas: GENERATIONS and SCORED shards (4 parts; 2 positive + 2 negative
responses per prompt, 1 in 50 an error row, 1 in 20 truncated (finish "length"); response texts drawn from a
Zipf-distributed 5,000-word vocabulary — about as compressible as English — with a mean of `--chars`
characters), then `ranked/` by the real rank stage (`rank_tables`, best-vs-worst, min margin 0.05). Then:

  1. `build_view` → RUN/view.html: prints the build seconds and the file size (goal ≤ 50 MB);
  2. the page in headless Chromium (the system `chromium`, through Playwright), `--repeats` times in a fresh
     tab: prints each time to first render (navigation start → list and charts drawn: the page's own
     `performance.now()` when it sets body[data-ready]) and the median (goal ≤ 3 s); then the time until
     the texts are decoded too, to open the first prompt, and to search all texts.

    .venv/bin/python benchmarks/view.py                  # 100,000 responses, median of 3
    .venv/bin/python benchmarks/view.py --rows 300000    # beyond the page limit: the page says what it sampled
    .venv/bin/python benchmarks/view.py --keep runs/bench-view   # keep the run folder (e.g. for screenshots)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_run(folder: Path, rows: int, mean_chars: int, seed: int = 0) -> None:
    import json

    import numpy as np
    import pyarrow as pa

    from neat_data.core.files import atomic_write_json
    from neat_data.core.keys import text_hash
    from neat_data.core.runfolder import atomic_write_table
    from neat_data.core.schemas import GENERATIONS, SCORED
    from neat_data.stages.rank.stage import RankConfig, rank_tables

    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
    vocabulary = ["".join(rng.choice(letters, size=int(n))) for n in rng.integers(2, 10, size=5000)]
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()

    def texts(count: int, mean: int) -> list[str]:
        lengths = np.clip(rng.normal(mean, mean / 2, size=count), 20, 4 * mean).astype(int)
        words = rng.choice(len(vocabulary), size=int(lengths.sum() / 5.5) + count * 4, p=weights)
        out, at = [], 0
        for length in lengths.tolist():
            pieces, size = [], 0
            while size < length:
                word = vocabulary[words[at % len(words)]]
                at += 1
                pieces.append(word)
                size += len(word) + 1
            out.append(" ".join(pieces)[:length])
        return out

    per_prompt = 4
    n_prompts = -(-rows // per_prompt)
    questions = texts(n_prompts, 160)
    systems = {"pos": "You are a helpful, harmless and honest assistant.", "neg": "You are a harmful, unhelpful and dishonest assistant."}
    responses = texts(rows, mean_chars)
    scores = rng.normal(0.0, 1.0, size=rows)
    records = []
    for i in range(rows):
        p, slot = divmod(i, per_prompt)
        steering = "pos" if slot < 2 else "neg"
        error = i % 50 == 7
        records.append(
            {
                "key": f"{i:032x}",
                "round": 1,
                "prompt_id": f"{p:016x}",
                "prompt": [{"role": "user", "content": questions[p]}],
                "steering": steering,
                "pair_library": "harmless",
                "system_prompt_id": f"harmless-{p % 12 + 1:02d}",
                "system_prompt_hash": text_hash(systems[steering]),
                "system_prompt": systems[steering],
                "system_mode": "system",
                "sample_index": slot % 2,
                "response": None if error else responses[i],
                "finish_reason": None if error else ("length" if i % 20 == 3 else "stop"),
                "model": "synthetic",
                "backend": "synthetic",
                "sampling": json.dumps({"temperature": 0.8}),
                "seed": p,
                "n_fallback": False,
                "prompt_tokens": 40,
                "completion_tokens": None if error else len(responses[i]) // 4,
                "status": "error" if error else "ok",
                "error": "HTTP 500 after 6 attempts" if error else None,
                "score": None if error else float(scores[i]),
                "raw_score": None if error else float(scores[i]),
                "scorer": "synthetic",
                "negative_score": "scored",
                "score_status": "skipped" if error else "ok",
                "score_error": None,
            }
        )
    shards = 4
    for s in range(shards):
        chunk = records[s * rows // shards : (s + 1) * rows // shards]
        atomic_write_table(folder / "generations" / f"part-{s:06d}.parquet", pa.Table.from_pylist(chunk, schema=GENERATIONS))
        atomic_write_table(folder / "scored" / f"part-{s:06d}.parquet", pa.Table.from_pylist(chunk, schema=SCORED))
    config = RankConfig(run=folder, pairs="best-vs-worst", min_margin=0.05)
    ranked = rank_tables(config, pa.Table.from_pylist(records, schema=SCORED))
    lists, pairs, summary = ranked[0], ranked[1], ranked[-1]
    atomic_write_table(folder / "ranked" / "lists.parquet", lists)
    atomic_write_table(folder / "ranked" / "pairs.parquet", pairs)
    if len(ranked) == 4:  # rank stages that record each dropped pair (ranked/dropped.parquet)
        atomic_write_table(folder / "ranked" / "dropped.parquet", ranked[2])
    atomic_write_json(
        folder / "manifest.json", {"stages": {"rank": {"config": config.model_dump(mode="json"), "summary": summary.__dict__}}}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chars", type=int, default=600, help="mean response length in characters")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the run here and keep it")
    args = parser.parse_args()

    from neat_data.view import ViewConfig, build_view
    from neat_data.view.browser import launch, missing, open_view

    reason = missing()
    if reason:
        sys.exit(f"benchmarks/view.py needs a real browser: {reason}")
    with tempfile.TemporaryDirectory() as temp:
        run = args.keep or Path(temp) / "run"
        started = time.time()
        synthetic_run(run, args.rows, args.chars)
        print(f"synthetic run: {args.rows:,} responses, mean {args.chars} characters, built in {time.time() - started:.1f} s → {run}")
        summary = build_view(ViewConfig(run=run))
        print(f"neat-data view: {summary.line()}")
        print(f"page size: {summary.bytes / 1e6:.1f} MB (goal ≤ 50 MB)")
        renders, texts, opens, searches = [], [], [], []
        with launch() as browser:
            for _ in range(args.repeats):
                page = open_view(browser, summary.path)
                renders.append(page.evaluate("window.neatFirstRenderMs"))
                page.wait_for_selector("body[data-texts='1']", state="attached", timeout=120_000)
                texts.append(page.evaluate("performance.now()"))
                clicked = page.evaluate("performance.now()")
                page.locator("#prompt-list tbody tr").first.click()
                page.wait_for_selector("#detail .response pre")
                opens.append(page.evaluate("performance.now()") - clicked)
                before = int(page.get_attribute("body", "data-refreshes") or 0)
                typed = page.evaluate("performance.now()")
                page.fill("#search", "zzqx")
                page.wait_for_selector(f"body[data-refreshes='{before + 1}']", state="attached", timeout=120_000)
                searches.append(page.evaluate("performance.now()") - typed - 250)  # minus the typing debounce
                page.close()
        print(
            "time to first render (ms): "
            + ", ".join(f"{v:.0f}" for v in renders)
            + f"; median {statistics.median(renders):.0f} (goal ≤ 3000)"
        )
        print(
            f"texts decoded too (ms): median {statistics.median(texts):.0f}; open a prompt: {statistics.median(opens):.0f}; "
            f"first search over all texts: {statistics.median(searches):.0f}"
        )


if __name__ == "__main__":
    main()
