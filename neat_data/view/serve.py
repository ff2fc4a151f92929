"""`neat-data view RUN --serve`: the same page from a server on 127.0.0.1, for runs too large to embed.

In:  a run folder. Out: http://127.0.0.1:PORT/ — the page with the index of every prompt (no sampling) and
no texts; the page asks `api/prompt?i=N` for one prompt's conversation and responses (full length) when it
is opened, and `api/search?q=TEXT` for the prompts whose conversation or responses contain TEXT (case-
insensitive). Texts are read from the Parquet shards once, at start, into Arrow arrays (searched with
pyarrow's vectorised substring match), not into the browser.
Run: `neat-data view runs/big --serve [--port 8765]`; Ctrl-C stops it.

Only 127.0.0.1 is bound, and a request whose Host header names another host is refused (a web page that
re-points a DNS name at 127.0.0.1 cannot read the run through the visitor's browser).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data.core.errors import NeatError
from neat_data.view.page import ViewConfig, render_page

HOST = "127.0.0.1"
MAX_QUERY_CHARS = 1000


class ViewData:
    """The served run: the page (index only), the texts as Arrow arrays, and the answers of the two APIs."""

    def __init__(self, config: ViewConfig):
        from neat_data.view.collect import RunContents

        contents = RunContents(config.run, heldout_chars=config.max_chars)
        selection = np.ones(contents.prompt_count, bool)
        index = contents.index(selection, mode="served")
        self.page = render_page(index, None, title=f"neat-data view · {Path(config.run).resolve().name}").encode("utf-8")
        self.first_row = np.asarray(index["prompts"]["r0"], np.int64)
        self.row_count = np.asarray(index["prompts"]["rn"], np.int64)
        self.prompt_of_row = np.asarray(index["responses"]["p"], np.int64)
        self.conversations, self.responses = contents.text_arrays(selection, None)
        self.conversation_text = pa.array(["\n".join(content or "" for _, content in turns) for turns in self.conversations], pa.string())
        self.prompts, self.rows = contents.prompt_count, contents.row_count

    def prompt(self, number: int) -> dict[str, Any] | None:
        if not 0 <= number < len(self.first_row):
            return None
        start, count = int(self.first_row[number]), int(self.row_count[number])
        return {"conv": self.conversations[number], "resp": self.responses.slice(start, count).to_pylist(), "cut": None}

    def search(self, query: str) -> list[int]:
        if not query:
            return list(range(len(self.first_row)))
        in_responses = pc.match_substring(self.responses, query, ignore_case=True).fill_null(False).to_numpy(zero_copy_only=False)
        in_conversations = (
            pc.match_substring(self.conversation_text, query, ignore_case=True).fill_null(False).to_numpy(zero_copy_only=False)
        )
        found = set(np.unique(self.prompt_of_row[in_responses]).tolist()) | set(np.flatnonzero(in_conversations).tolist())
        return sorted(found)


def make_handler(data: ViewData) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "neat-data-view"

        def log_message(self, *args: Any) -> None:  # quiet: the terminal shows the URL, not every request
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: Any, status: int = 200) -> None:
            self._send(status, json.dumps(value, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

        def do_GET(self) -> None:  # the name http.server calls
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if host not in (HOST, "localhost"):
                self._json({"error": "wrong host"}, 403)
                return
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path in ("/", "/view.html"):
                self._send(200, data.page, "text/html; charset=utf-8")
            elif url.path == "/api/prompt":
                try:
                    answer = data.prompt(int(query.get("i", ["-1"])[0]))
                except ValueError:
                    answer = None
                self._json(answer) if answer is not None else self._json({"error": "no such prompt"}, 404)
            elif url.path == "/api/search":
                self._json({"prompts": data.search(query.get("q", [""])[0][:MAX_QUERY_CHARS])})
            else:
                self._json({"error": "not found"}, 404)

    return Handler


class ViewServer:
    """A started server (`port` 0 picks a free port); `url`, `stop()`; `serve_forever()` blocks."""

    def __init__(self, config: ViewConfig, port: int = 8765):
        self.data = ViewData(config)
        try:
            self.httpd = ThreadingHTTPServer((HOST, port), make_handler(self.data))
        except OSError as error:
            raise NeatError(f"cannot listen on {HOST}:{port} ({error.strerror or error}); choose another --port", field="port") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{HOST}:{self.port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> ViewServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="neat-data-view", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
