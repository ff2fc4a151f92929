"""The system Chromium driven by Playwright: used by the view tests, benchmarks/view.py and the screenshot script.

In:  a page (a view.html path or a served URL). Out: a Playwright `Browser` (`launch()`), the page's time to
first render (`first_render_ms`) or a PNG (`screenshot`).
Playwright's own browser download is not needed: Debian's `chromium` package (`/usr/bin/chromium`, or the
path in $NEAT_DATA_CHROMIUM) is launched with `executable_path`. `bash scripts/setup.sh` installs both
(Chromium with apt-get when run as root). Without the background-networking flags Chromium keeps trying to
reach Google's services, which a closed network refuses.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOW_TO_GET_IT = (
    "run `bash scripts/setup.sh` (as root it installs Debian's chromium with apt-get; playwright comes from "
    "requirements/view.txt), or set NEAT_DATA_CHROMIUM to a Chromium binary"
)


def find_chromium() -> str | None:
    configured = os.environ.get("NEAT_DATA_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why a real browser cannot be started here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the Python package playwright is not installed: {HOW_TO_GET_IT}"
    if find_chromium() is None:
        return f"no Chromium found (chromium / chromium-browser on PATH, or $NEAT_DATA_CHROMIUM): {HOW_TO_GET_IT}"
    return None


@contextmanager
def launch() -> Iterator[Any]:
    """A headless Chromium (a Playwright Browser) for the duration of the block."""
    from playwright.sync_api import sync_playwright

    reason = missing()
    if reason:
        raise RuntimeError(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def page_url(target: str | Path) -> str:
    text = str(target)
    return text if text.startswith(("http://", "https://", "file://")) else Path(text).resolve().as_uri()


def open_view(browser: Any, target: str | Path, *, width: int = 1400, height: int = 1000, timeout_ms: float = 60_000) -> Any:
    """A new page showing the view, once its first render is done (body[data-ready]); errors are collected."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.neat_errors = []
    page.on("pageerror", lambda error: page.neat_errors.append(str(error)))
    page.goto(page_url(target), timeout=timeout_ms)
    page.wait_for_selector("body[data-ready='1'], body[data-failed]", timeout=timeout_ms, state="attached")
    failed = page.get_attribute("body", "data-failed")
    if failed:
        raise RuntimeError(f"the page failed to load its data: {failed}")
    return page


def first_render_ms(browser: Any, target: str | Path) -> float:
    """Milliseconds from navigation start to the first render of list and charts (the page's own clock)."""
    page = open_view(browser, target)
    try:
        return float(page.evaluate("window.neatFirstRenderMs"))
    finally:
        page.close()


def screenshot(target: str | Path, out: Path, *, open_prompt: int | None = 0, width: int = 1400, height: int = 1000) -> Path:
    """Render the view in Chromium and save a PNG; `open_prompt`: the list row to open first (None: none)."""
    with launch() as browser:
        page = open_view(browser, target, width=width, height=height)
        page.wait_for_selector("body[data-texts='1']", state="attached")
        if open_prompt is not None and page.locator("#prompt-list tbody tr").count() > open_prompt:
            page.locator("#prompt-list tbody tr").nth(open_prompt).click()
            page.wait_for_selector("#detail .response", timeout=30_000)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
    return out
