"""Whole-or-absent files and strict JSON reading, without pyarrow (the manifest and the batch journals use them, and
importing `neat_data.engines` stays light): a file is written under a temporary name, fsynced, then renamed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from neat_data.core.errors import NeatError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json_bytes(value))


def json_bytes(value: Any) -> bytes:
    """How neat-data writes a JSON file: indented, keys sorted, UTF-8, one final newline."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def decode_json(path: Path, subject: str, hint: str) -> Any:
    """The JSON value of a file; not UTF-8 or not JSON is a NeatError naming the file (and the line)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise NeatError(f"{subject}not UTF-8 ({error.reason}){hint}", file=path) from None
    except json.JSONDecodeError as error:
        raise NeatError(f"{subject}not valid JSON ({error.msg}){hint}", file=path, row=error.lineno) from None
