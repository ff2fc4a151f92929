"""Render a run's view.html in the system Chromium and save a PNG (the README's screenshot).

    .venv/bin/python scripts/screenshot_view.py runs/quickstart docs/view.png            # builds RUN/view.html if missing
    .venv/bin/python scripts/screenshot_view.py runs/quickstart docs/view.png --open 3 --width 1600 --height 1100 --rebuild

RUN may be a run folder (its view.html is used, built first when missing or with --rebuild) or a .html file.
`--open N` opens the N-th prompt of the list (0-based; -1: none) before the shot. Needs playwright and a
Chromium (`bash scripts/setup.sh`; as root it installs Debian's chromium).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="run folder or view.html")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--open", type=int, default=0, help="list row to open first (-1: none)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--rebuild", action="store_true", help="rebuild RUN/view.html first")
    args = parser.parse_args()

    from neat_data.core.errors import NeatError
    from neat_data.view import ViewConfig, build_view
    from neat_data.view.browser import missing, screenshot

    reason = missing()
    if reason:
        sys.exit(f"error: {reason}")
    page = args.run
    if args.run.is_dir():
        page = args.run / "view.html"
        if args.rebuild or not page.is_file():
            try:
                print(build_view(ViewConfig(run=args.run)).line())
            except NeatError as error:
                sys.exit(f"error: {error.one_line()}")
    elif not page.is_file():
        sys.exit(f"error: {page}: no such run folder or page")
    screenshot(page, args.out, open_prompt=None if args.open < 0 else args.open, width=args.width, height=args.height)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
