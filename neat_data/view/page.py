"""The HTML page: one self-contained file (inline CSS and script, data embedded gzip-compressed, no network).

In:  the index and texts from `neat_data.view.collect`. Out: the HTML text (`render_page`); `build_view` writes
`RUN/view.html` atomically, sampling whole prompts when the run is larger than `max_mb`.
Run: `neat-data view RUN` (see `neat_data.view`).

How data gets in (measured, see benchmarks/view.py): JSON → gzip → base64 inside two
`<script type="application/octet-stream">` blocks (the index, then the texts), which the browser never runs;
the page decodes them with the built-in `DecompressionStream`, renders from the index first and decodes the
texts next. A Content-Security-Policy that allows only this page's own script and style (by hash) means a
response text that somehow became markup still could not run code; the page itself only ever puts data into
the document as text (`textContent`), never as HTML.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.errors import NeatError
from neat_data.core.files import atomic_write_bytes

ASSETS = Path(__file__).resolve().parent / "assets"
PLACEHOLDER = re.compile(r"\{\{(CSP|TITLE|STYLE|SCRIPT|INDEX|TEXTS)\}\}")
SCRIPTS = ("core.js", "charts.js", "prompts.js", "detail.js", "rounds.js", "main.js")  # concatenated in this order


class ViewConfig(BaseModel):
    """What `neat-data view` needs; the CLI is a thin shell over it."""

    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="A run folder: a stage run (generations/, scored/, ranked/) or a `neat-data run` folder.")
    out: Path | None = Field(None, description="Where to write the page (default RUN/view.html).")
    max_mb: float = Field(
        50.0, gt=0, description="Largest embedded page in MB; a larger run is sampled (whole prompts, a fixed hash order)."
    )
    max_responses: int = Field(250_000, ge=1, description="Most responses embedded in the page; more are sampled the same way.")
    max_chars: int = Field(
        20_000, ge=100, description="Longest text embedded per response or turn (the rest is cut, and the page says so)."
    )

    def out_path(self) -> Path:
        return self.out or Path(self.run) / "view.html"


@dataclass
class ViewSummary:
    path: Path
    bytes: int
    prompts: int
    prompts_total: int
    responses: int
    responses_total: int
    seconds: float

    def line(self) -> str:
        sample = (
            (
                f" (sampled: {self.prompts} of {self.prompts_total} prompts, {self.responses} of {self.responses_total} responses; "
                "--serve shows all)"
            )
            if self.prompts < self.prompts_total
            else ""
        )
        return f"{self.path}: {self.bytes / 1e6:.1f} MB, {self.prompts} prompts, {self.responses} responses{sample} in {self.seconds:.1f} s"


def pack(value: Any) -> str:
    """JSON → gzip → base64 (ASCII only, so it can never close the <script> block it sits in)."""
    raw = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


PACKED_BLOCK = re.compile(rb'<script type="application/octet-stream" id="data-(?:index|texts)">([A-Za-z0-9+/=]*)</script>')


def readable_bytes(page: bytes) -> bytes:
    """A page as a reader of it gets it: its markup plus its packed data unpacked — what a check for a secret must
    search (the packed data hides any text from a search of the file's bytes)."""
    unpacked = [gzip.decompress(base64.b64decode(block)) for block in PACKED_BLOCK.findall(page) if block]
    return b"\n".join([page, *unpacked])


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def script_text() -> str:
    return "\n".join((ASSETS / name).read_text(encoding="utf-8") for name in SCRIPTS)


def render_page(index: dict[str, Any], texts: dict[str, Any] | None, *, title: str) -> str:
    """The whole page. `texts` None = served mode: the page asks the local server for texts and searches."""
    script = script_text()
    style = (ASSETS / "view.css").read_text(encoding="utf-8")
    template = (ASSETS / "view.html").read_text(encoding="utf-8")
    connect = "'self'" if texts is None else "'none'"
    csp = (
        f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; img-src data:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'"
    )
    parts = {
        "CSP": csp,
        "TITLE": html.escape(title),
        "STYLE": style,
        "SCRIPT": script,
        "INDEX": pack(index),
        "TEXTS": pack(texts) if texts is not None else "",
    }
    # one pass: text put in (a run named "{{SCRIPT}}", say) is never scanned for placeholders again
    return PLACEHOLDER.sub(lambda match: parts[match.group(1)], template)


def build_view(config: ViewConfig) -> ViewSummary:
    """Write the page. Beyond `max_responses` / `max_mb` whole prompts are sampled in a fixed hash order;
    the page says what it holds. The size budget is checked on the written bytes and tightened until it fits."""
    from neat_data.view.collect import RunContents

    started = time.time()
    contents = RunContents(config.run, heldout_chars=config.max_chars)
    title = f"neat-data view · {Path(config.run).resolve().name}"
    limit = config.max_mb * 1e6

    def page_for(selection) -> tuple[dict[str, Any], bytes]:
        index = contents.index(selection, mode="embedded")
        return index, render_page(index, contents.texts(selection, config.max_chars), title=title).encode("utf-8")

    sizes = contents.prompt_sizes(config.max_chars)[1]
    budget = limit * 2.0  # estimated raw bytes; gzip (~3×) then base64 (4/3) usually lands under the limit
    fixed = None
    for _ in range(8):
        selection = contents.select(max_responses=config.max_responses, max_bytes=budget, max_chars=config.max_chars)
        index, data = page_for(selection)
        if len(data) <= limit:
            break
        if fixed is None:  # what a page costs with no prompt in it: code, style, held-out answers, rounds
            fixed = len(page_for(selection & False)[1])
            if fixed > limit:
                raise NeatError(f"a page of this run needs at least {fixed / 1e6:.2f} MB; raise --max-mb", field="max_mb")
        # bytes written per estimated byte, measured on this try; aim a little under the limit
        ratio = (len(data) - fixed) / max(float(sizes[selection].sum()), 1.0)
        budget = min(budget * 0.9, (limit - fixed) / max(ratio, 1e-9) * 0.97)
    else:
        raise NeatError(f"could not fit the page in {config.max_mb} MB; raise --max-mb", field="max_mb")
    out = config.out_path()
    atomic_write_bytes(out, data)
    sample = index["sample"] or {
        "prompts": contents.prompt_count,
        "prompts_total": contents.prompt_count,
        "responses": contents.row_count,
        "responses_total": contents.row_count,
    }
    return ViewSummary(
        out, len(data), sample["prompts"], sample["prompts_total"], sample["responses"], sample["responses_total"], time.time() - started
    )
