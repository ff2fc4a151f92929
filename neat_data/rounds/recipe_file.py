"""Reading a recipe file and its `--set` overrides: YAML in, a plain mapping out; every way either can be wrong is
one NeatError line naming the file or the override. The schema that validates the mapping is neat_data.rounds.recipe."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from neat_data.core.errors import NeatError
from neat_data.core.files import load_yaml


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], the value read as YAML); a NeatError naming the override when it is malformed."""
    if "=" not in text:
        raise NeatError(f"--set wants key=value, got {text!r}", option="set")
    key, value = text.split("=", 1)
    keys = [part.strip() for part in key.split(".")]
    if not all(keys) or not all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in keys):
        raise NeatError(f"--set key {key!r} must be dotted names, e.g. train.lr", option="set")
    try:
        parsed = load_yaml(value) if value.strip() else None
    except NeatError as error:  # a key given twice, an alias bomb: named inside the value
        where = f"{key}.{error.field}" if error.field else key
        raise NeatError(f"--set {where}: {error.message}", option="set") from None
    except yaml.YAMLError as error:
        raise NeatError(
            f"--set {key}: the value is not valid YAML ({getattr(error, 'problem', None) or 'syntax error'})", option="set"
        ) from None
    if isinstance(parsed, str):
        try:
            parsed = float(parsed)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    return keys, parsed


def apply_override(raw: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    target = raw
    for depth, key in enumerate(keys[:-1]):
        child = target.setdefault(key, {})
        if child is None:
            child = target[key] = {}
        if not isinstance(child, dict):
            raise NeatError(f"--set {text!r}: '{'.'.join(keys[: depth + 1])}' is a {type(child).__name__}, not a section", option="set")
        target = child
    target[keys[-1]] = value


def read_recipe_file(path: Path) -> dict[str, Any]:
    """The recipe's YAML mapping; every way a file can be wrong is one line naming it."""
    if path.is_dir():
        raise NeatError("is a folder, not a recipe file", file=path)
    try:
        raw = load_yaml(path.read_bytes().decode("utf-8"), file=path)
    except FileNotFoundError:
        raise NeatError("recipe not found", file=path) from None
    except UnicodeDecodeError as error:
        raise NeatError(f"not valid UTF-8 ({error.reason} at byte {error.start})", file=path) from None
    except OSError as error:
        raise NeatError(f"cannot read the recipe ({error.strerror})", file=path) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise NeatError(f"YAML syntax error: {getattr(error, 'problem', error)}", file=path, row=mark.line + 1 if mark else None) from None
    if not isinstance(raw, dict):
        raise NeatError("a recipe is a mapping of keys", file=path)
    return raw


def relative_to_file(base: Path, value: Any) -> Any:
    """A relative file path is relative to the folder of the file that names it (a recipe's own values: the recipe's
    folder; a `--set` value: the current folder). hf:// sources and other URLs pass through."""
    if not isinstance(value, str) or "://" in value or ":" in value.split("/")[0] or Path(value).is_absolute():
        return value
    return str((base / value).resolve())
