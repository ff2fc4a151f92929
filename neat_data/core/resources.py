"""Where bundled data lives: prompt-pair libraries (`prompts/`) and recipes (`pipelines/`).

In a checkout (or an editable install) they are the top-level folders of the repository; in an installed
wheel they are copied to `neat_data/_bundled/` (see `pyproject.toml`). Callers ask for a folder by name
and never care which.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # neat_data/


def bundled_dir(name: str) -> Path:
    """Return the folder holding bundled data `name` ("prompts" or "pipelines")."""
    installed = _PACKAGE_DIR / "_bundled" / name
    if installed.is_dir():
        return installed
    checkout = _PACKAGE_DIR.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"bundled data folder '{name}' not found (looked in {installed} and {checkout}); reinstall neat-data")
