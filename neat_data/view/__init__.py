"""`neat-data view RUN` → `RUN/view.html`: one self-contained page to look at a run's data (no network).

In:  a run folder (a stage run, or a `neat-data run` folder with rounds). Out: `RUN/view.html`, or with
`--serve` the same page on http://127.0.0.1:PORT with texts and search answered by a local server.
Run: `neat-data view runs/demo` · `neat-data view runs/quickstart --serve --port 8765`.

Modules: `tables` (column reads of the run's Parquet tables), `collect` (the page's index and texts,
sampling), `rounds_data` (rounds table and held-out answers), `page` (the HTML, `ViewConfig`,
`build_view`), `serve` (`--serve`), `browser` (the system Chromium through Playwright: tests, benchmark,
screenshots). The page's code is in `assets/` (plain JS and CSS, inlined into every page).
"""

from neat_data.view.page import ViewConfig, ViewSummary, build_view

__all__ = ["ViewConfig", "ViewSummary", "build_view"]
