"""Prompt-pair libraries: bundled data, deterministic choice, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from neat_data.core.errors import NeatError
from neat_data.core.pairs import bundled_library_paths, choose_pair, load_libraries, load_library


def test_bundled_libraries_have_at_least_eight_distinct_pairs():
    assert {"harmless", "helpful"} <= set(bundled_library_paths())
    for name in ("harmless", "helpful"):
        library = load_library(name)
        assert len(library.pairs) >= 8
        assert len({p.id for p in library.pairs}) == len(library.pairs)
        for pair in library.pairs:
            assert pair.positive and pair.negative and pair.positive != pair.negative


def test_pair_choice_is_deterministic_in_seed_and_prompt():
    libraries = load_libraries("harmless,helpful")
    first = [choose_pair(libraries, 0, f"p{i}").id for i in range(50)]
    assert first == [choose_pair(libraries, 0, f"p{i}").id for i in range(50)]
    assert first != [choose_pair(libraries, 1, f"p{i}").id for i in range(50)]
    assert {pid.split("-")[0] for pid in first} == {"harmless", "helpful"}


def test_library_from_a_yaml_path(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\npairs:\n  - id: m-1\n    positive: Be good.\n    negative: Be bad.\n")
    library = load_library(str(path))
    assert library.name == "mine" and library.pairs[0].system_prompt("neg") == "Be bad."


@pytest.mark.parametrize(
    "text, row, field, message",
    [
        ("name: x\npairs: [\n", 3, None, "invalid YAML"),
        ("name: x\npairs: []\n", None, "pairs", "non-empty"),
        ("name: x\npairs:\n  - id: a\n    positive: p\n", 1, "pairs.negative", "missing or empty"),
        ("name: x\npairs:\n  - {id: a, positive: p, negative: n}\n  - {id: a, positive: p, negative: n}\n", 2, "pairs.id", "duplicate"),
        ("name: x\ncolour: red\npairs:\n  - {id: a, positive: p, negative: n}\n", None, "colour", "unknown key"),
    ],
)
def test_bad_library_files_name_file_row_field(tmp_path: Path, text, row, field, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(NeatError) as caught:
        load_library(str(path))
    error = caught.value
    assert error.file == str(path) and error.row == row and error.field == field and message in error.message


def test_unknown_library_name():
    with pytest.raises(NeatError, match="unknown prompt-pair library"):
        load_library("no-such-library")
