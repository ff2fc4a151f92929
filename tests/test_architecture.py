"""The shape of the code, checked: no import cycle in neat_data/, lower layers never import upper ones, every list of
names (backends, scorers, export formats, losses, pair strategies) is defined once and the CLI offers exactly it.
docs/ARCHITECTURE.md describes the layers these tests hold the code to."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import click
from conftest import REPO

from neat_data.cli import cli

PACKAGE = REPO / "neat_data"
# Layers, lowest first. A module may import its own layer and the ones below, never one above (docs/ARCHITECTURE.md).
LAYERS = [
    ("foundation", ["core", "lm", "safety"]),
    ("engines, scorers, train", ["engines", "scorers", "train", "testing"]),
    ("stages", ["stages", "view"]),
    ("rounds", ["rounds"]),
    ("cli", ["cli"]),
]
# The package root holds only these packages (and __init__.py): a module loose at the root has no layer.
assert sorted(p.name for p in (REPO / "neat_data").iterdir() if p.name not in ("__init__.py", "__pycache__", "_bundled")) == sorted(
    name for _, members in LAYERS for name in members
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py") if "_bundled" not in path.parts}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Every neat_data module `path` imports — at the top, inside functions, or for type checking only."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("neat_data")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("neat_data"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return {name for name in found if name in known} - {module_name(path)}


def layer_of(name: str) -> int:
    top = name.split(".")[1] if name.count(".") else ""
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{name} is in no layer of tests/test_architecture.py (and docs/ARCHITECTURE.md): place it")


def test_the_import_graph_of_neat_data_has_no_cycle():
    known = modules()
    graph = {name: imports_of(path, known) for name, path in known.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target] if target in path else [name, target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" → ".join(cycle) for cycle in cycles)


def test_lower_layers_never_import_upper_ones():
    known = modules()
    wrong = []
    for name, path in known.items():
        if name == "neat_data":
            continue
        for target in imports_of(path, known):
            if target != "neat_data" and layer_of(target) > layer_of(name):
                wrong.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not wrong, "\n".join(wrong)


def choices(*path: str) -> list[str]:
    command: click.Command = cli
    for name in path[:-1]:
        command = command.commands[name]  # type: ignore[attr-defined]
    option = next(p for p in command.params if p.name == path[-1])
    assert isinstance(option.type, click.Choice), f"{' '.join(path)} is not a choice"
    return list(option.type.choices)


def test_the_cli_offers_exactly_the_names_the_configs_define():
    from neat_data.engines import BackendName
    from neat_data.scorers.judge import JudgeBackendName, JudgeMode
    from neat_data.stages.export import ExportFormat
    from neat_data.stages.rank import PairStrategy
    from neat_data.train.loss import LossName

    for path, names in (
        (("generate", "backend"), BackendName),
        (("evaluate", "backend"), BackendName),  # it offered a hand-written three of them
        (("score", "judge_backend"), JudgeBackendName),
        (("score", "judge_mode"), JudgeMode),
        (("export", "format"), ExportFormat),
        (("push", "format"), ExportFormat),
        (("rank", "pairs"), PairStrategy),
        (("train", "loss"), LossName),
    ):
        assert choices(*path) == list(typing.get_args(names)), path


def spelled_lists(path: Path) -> list[set[str]]:
    """Every list of strings a module writes out: tuple/list/set displays and `Literal[...]` subscripts."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        elements = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else []
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple):
            elements = node.slice.elts
        strings = {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if strings:
            found.append(strings)
    return found


def test_each_list_of_names_is_spelled_out_in_one_module():
    """A second module that spells out (most of) a list of names, and nothing else, is a copy that will drift (it did: the recipe
    accepted a temperature the stage rejected; PRO ran for any unknown loss name)."""
    from neat_data.engines import BackendName
    from neat_data.stages.export import ExportFormat
    from neat_data.stages.rank import PairStrategy
    from neat_data.train.loss import LossName

    lists = {
        "backends": (BackendName, "engines/__init__.py"),
        "export formats": (ExportFormat, "stages/export.py"),
        "pair strategies": (PairStrategy, "stages/rank.py"),
        "losses": (LossName, "train/loss.py"),
    }
    for label, (names, home) in lists.items():
        wanted = set(typing.get_args(names))
        spelled = sorted(
            {
                path.relative_to(PACKAGE).as_posix()
                for path in PACKAGE.rglob("*.py")
                for strings in spelled_lists(path)
                if strings <= wanted and len(strings) >= (len(wanted) - 1 if len(wanted) > 3 else len(wanted))
            }
        )
        assert spelled == [home], f"{label} spelled out in {spelled}, expected only {home}"


def test_no_file_points_outside_the_repository():
    """A user who clones the repository has nothing beside it: the docs the code cites live in docs/."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not tracked:  # not a git checkout (an unpacked sdist): every file below the repo
        tracked = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".venv" not in p.parts]
    outside = "../" + "shared"  # spelled in two parts, so this file does not match itself
    hits = [
        name
        for name in tracked
        if name.endswith((".py", ".md", ".yaml", ".toml", ".sh", ".txt"))
        and (REPO / name).is_file()
        and outside in (REPO / name).read_text(encoding="utf-8", errors="replace")
    ]
    assert not hits, hits
