"""Whole-or-absent files and strict JSON and YAML reading, without pyarrow (the manifest and the batch journals use them, and
importing `neat_data.engines` stays light): a file is written under a temporary name, fsynced, then renamed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from neat_data.core.errors import NeatError, with_path


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
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        raise with_path(error, path) from error
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


MAX_ALIAS_EXPANSION = 100_000  # values YAML aliases may add to a document: a recipe or library needs a few dozen


def load_yaml(text: str, *, file: str | Path | None = None) -> Any:
    """`yaml.safe_load(text)` that refuses what safe_load accepts silently: a key given twice in one mapping (the last
    would win) and aliases that expand past MAX_ALIAS_EXPANSION values (a "billion laughs" bomb hangs whatever walks
    the result) or refer to themselves. Both are a NeatError naming the key (dotted) and its line, as is nesting too
    deep for the parser; a syntax error is yaml.YAMLError, as from safe_load."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_node(node, file)
        return loader.construct_document(node)
    except RecursionError:  # PyYAML composes and constructs recursively: [[[[…]]]] thousands deep
        raise NeatError("nested too deeply (YAML lists or mappings inside each other by the thousand)", file=file) from None
    finally:
        loader.dispose()


def _check_yaml_node(root: Any, file: str | Path | None) -> None:
    import yaml

    constructor = yaml.constructor.SafeConstructor()
    sizes: dict[int, int] = {}  # node → the number of values it expands to (aliases counted every time)
    open_nodes: set[int] = set()

    def fail(message: str, node: Any, path: list[str]) -> NeatError:
        return NeatError(message, file=file, row=node.start_mark.line + 1, field=".".join(path) or None)

    def size(node: Any, path: list[str]) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise fail("an alias refers to the value that holds it (a recursive YAML alias)", node, path)
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.tag}>"
                if key_node.tag != "tag:yaml.org,2002:merge":  # `<<: *base` then `key: …` overrides on purpose
                    identity = loader_key(key_node)
                    if identity in seen:
                        first = seen[identity].start_mark.line + 1
                        raise fail(f"key given twice (first on line {first}); YAML keeps only the last", key_node, [*path, str(key)])
                    seen[identity] = key_node
                total += size(key_node, path) + size(value_node, [*path, str(key)])
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, [*path, str(index)]) for index, item in enumerate(node.value))
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        if total > MAX_ALIAS_EXPANSION + len(sizes):  # more than the document's own values: aliases multiply them
            raise fail(f"YAML aliases expand this value past {MAX_ALIAS_EXPANSION} values (an alias bomb?)", node, path)
        return total

    def loader_key(key_node: Any) -> Any:
        """What the key becomes once constructed (`1`, `"1"` and `true`/`yes` differ or agree as YAML says)."""
        if isinstance(key_node, yaml.ScalarNode):
            resolved = constructor.construct_object(key_node)
            return (type(resolved).__name__, resolved)
        return id(key_node)

    size(root, [])
