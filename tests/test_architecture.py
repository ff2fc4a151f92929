"""The shape of the code, checked: no import cycle in neat_data/, lower layers never import upper ones, every list of
names (backends, scorers, export formats, losses, pair strategies) is defined once and the CLI offers exactly it.
docs/ARCHITECTURE.md describes the layers these tests hold the code to."""

from __future__ import annotations

import ast
import os
import typing
from pathlib import Path

import click
import pytest
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
    from neat_data.rounds.stages import StageKindName
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
        (("stage", "kind"), StageKindName),
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
    from neat_data.rounds.stages import StageKindName
    from neat_data.safety.metrics import MetricName
    from neat_data.scorers import ScorerName
    from neat_data.stages.export import ExportFormat
    from neat_data.stages.rank import PairStrategy
    from neat_data.train.loss import LossName

    lists = {
        "backends": (BackendName, "engines/__init__.py"),
        "scorers": (ScorerName, "scorers/__init__.py"),
        "safety metrics": (MetricName, "safety/metrics.py"),
        "stage kinds": (StageKindName, "rounds/stages.py"),
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


# ------------------------------------------------------------------- the "to add …" recipes of docs/ARCHITECTURE.md
# Each trial applies one recipe, as the document writes it, to a copy of the package (edits in at most two files),
# then shows in a fresh process that the new name reaches every place the document promises. A recipe that needs a
# further edit somewhere fails here.

TRIALS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "export format": {
        "stages/export.py": [
            (r"(ExportFormat = Literal\[[^\]]*)\]", r'\1, "trial"]'),
            (
                r"\n(LAYOUTS: dict\[ExportFormat, Layout\] = \{)",
                "\ndef _trial(pairs: pa.Table, config: ExportConfig) -> dict[str, Any]:\n"
                '    return {"prompt_id": pairs.column("prompt_id"), "margin": pc.subtract(pairs.column("score_chosen"), pairs.column("score_rejected"))}\n\n\n\\1',
            ),
            (
                r"(LAYOUTS: dict\[ExportFormat, Layout\] = \{)",
                r'\1\n    "trial": Layout("pairs", {"prompt_id": "string", "margin": "float"}, _trial),',
            ),
        ],
    },
    "loss": {
        "train/loss.py": [
            (r"(LossName = Literal\[[^\]]*)\]", r'\1, "trial"]'),
            (
                r"\n(# w_sft defaults)",
                "\ndef trial_objective(inputs: LossInputs, settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:\n"
                '    """L = −Σ p (a throwaway loss)."""\n'
                "    total = -sequence_scores(inputs.sums, inputs.counts).sum()\n"
                '    return total, {"loss": float(total), "trial_part": 0.25}\n\n\n\\1',
            ),
            (
                r"(LOSSES: dict\[str, Loss\] = \{)",
                r'\1\n    "trial": Loss(trial_objective, lambda most_candidates: 0.5),',
            ),
        ],
    },
    "metric": {
        "safety/metrics.py": [
            (r"(MetricName = Literal\[[^\]]*)\]", r'\1, "trial"]'),
            (
                r'("finish": Metric\(lambda texts, reasons: \[[^\n]*\),)',
                r'\1\n    "trial": Metric(lambda texts, reasons: [float(len(text)) for text in texts], {"harmful": "trial chars {suite}"}),',
            ),
        ],
    },
    "scorer": {
        "scorers/__init__.py": [
            (r"(ScorerName = Literal\[[^\]]*)\]", r'\1, "trial"]'),
            (
                r"\n(# One builder per name of ScorerName)",
                "\ndef _trial(options: ScorerOptions, model: str, state_dir: Path | None, journal: BatchJournal | None) -> Scorer:\n"
                "    from neat_data.scorers.trial import TrialScorer\n\n    return TrialScorer()\n\n\n\\1",
            ),
            (r"(BUILDERS: dict\[[^\n]*\] = \{)", r'\1\n    "trial": _trial,'),
        ],
        "scorers/trial.py": [
            (
                r"\A\Z",
                "from neat_data.scorers.base import ScoreItem, ScoreResult\n\n\nclass TrialScorer:\n"
                '    name = "trial"\n\n    def score(self, items: list[ScoreItem]) -> list[ScoreResult]:\n'
                "        return [ScoreResult(score=float(len(item.response))) for item in items]\n",
            )
        ],
    },
}

TRIAL_CHECKS = {
    "export format": """
import pyarrow as pa
from neat_data.cli import cli
from neat_data.stages.export import ExportConfig, export_table, features
for command in ("export", "push"):
    assert "trial" in next(p for p in cli.commands[command].params if p.name == "format").type.choices
recipe = load(exports=["ranked", "trial"])
assert [s.label for s in plan_round(recipe, Path("runs/t"), 1) if s.kind.name == "export"] == ["export-ranked", "export-trial"]
assert list(features("trial")) == ["prompt_id", "margin"]
from neat_data.core.schemas import PAIRS
run = Path("run")
(run / "ranked").mkdir(parents=True)
row = {f.name: None for f in PAIRS}
row.update(prompt_id="p1", prompt=[{"role": "user", "content": "q"}], chosen="a", rejected="b", score_chosen=0.75, score_rejected=0.25)
import pyarrow.parquet as pq
pq.write_table(pa.Table.from_pylist([row], schema=PAIRS), run / "ranked" / "pairs.parquet")
assert export_table(ExportConfig(run=run, format="trial")).to_pylist() == [{"prompt_id": "p1", "margin": 0.5}]
""",
    "loss": """
import os
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner
from neat_data.cli import cli
from neat_data.core.schemas import RANKED_LISTS
from neat_data.train.loss import LOSSES
train = cli.commands["train"]
assert "trial" in next(p for p in train.params if p.name == "loss").type.choices
recipe = load(train={"loss": "trial"})
assert [s.config.loss for s in plan_round(recipe, Path("runs/t"), 1) if s.kind.name == "train"] == ["trial"]
assert LOSSES["trial"].default_sft_weight(4) == 0.5 and not LOSSES["trial"].needs_reference
rows = [
    {"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"question {i}?"}], "responses": ["a good answer", "an answer", "no"],
     "finish_reason": ["stop"] * 3, "scores": [2.0, 1.0, 0.0], "steering": ["pos", "pos", "neg"], "keys": ["a", "b", "c"]}
    for i in range(4)
]
pq.write_table(pa.Table.from_pylist(rows, schema=RANKED_LISTS), "ranked.parquet")
args = ["train", "ranked.parquet", "--model", os.environ["TRIAL_MODEL"], "--loss", "trial", "--prompts-per-batch", "4", "--out", "model"]
result = CliRunner().invoke(cli, args)
assert result.exit_code == 0, result.output
assert "trial_part 0.2500" in result.output, result.output  # the trainer's own progress line shows the new loss's part
assert "1 steps on 4 prompts" in result.output
""",
    "metric": """
import yaml
from neat_data.safety.metrics import response_metrics
from neat_data.safety.suites import load_suites
from neat_data.stages.round_report import table_lines
assert response_metrics(["trial", "length"], ["abc", "de f"]) == {"trial": [3.0, 4.0], "length": [1.0, 2.0]}
suite = Path("trial-suite.yaml")
suite.write_text(yaml.safe_dump({"name": "trial-suite", "kind": "harmful", "source": str(prompts), "metrics": ["refusal", "trial"]}))
assert load_suites([str(suite)])[0].metrics == ["refusal", "trial"]
load(evaluate={"suites": [str(suite)]})
row = {"round": 0, "reward_mean": 0.1, "reward_ci95": [0.0, 0.2], "win_rate_vs_base": None, "perplexity": None, "pairs": None,
       "train_tokens": None, "wall_seconds": 1.0,
       "safety": {"trial-suite": {"kind": "harmful", "metrics": {"trial": {"mean": 12.0, "ci95": [10.0, 14.0]}}}}}
header, _, cells = table_lines([row])
assert "trial chars trial-suite" in header and "12.00 [10.00, 14.00]" in cells, (header, cells)
""",
    "scorer": """
from click.testing import CliRunner
from neat_data.cli import cli
from neat_data.scorers import ScorerOptions, make_scorer
from neat_data.scorers.base import ScoreItem
from neat_data.stages.score import ScoreConfig
for command in ("score", "evaluate"):
    assert "trial" in CliRunner().invoke(cli, [command, "--help"]).output, command
assert ScoreConfig(run=Path("r"), scorer="trial").scorer == "trial"
recipe = load(score={"scorer": "trial"})
assert [s.config.scorer for s in plan_round(recipe, Path("runs/t"), 1) if s.kind.name == "score"] == ["trial"]
scorer = make_scorer(ScorerOptions(scorer="trial"), "m")
assert [r.score for r in scorer.score([ScoreItem([{"role": "user", "content": "q"}], "four", "pos", "a", "b")])] == [4.0]
""",
}

TRIAL_PRELUDE = """
import json, sys
from pathlib import Path
import yaml
from neat_data.rounds.recipe import load_recipe, plan_round
prompts = Path("prompts.jsonl")
prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\\n" for i in range(8)))
def load(**sections):
    raw = {"name": "t", "model": "m", "prompts": {"source": str(prompts), "heldout": 2, "per_round": 2}, **sections}
    Path("r.yaml").write_text(yaml.safe_dump(raw))
    return load_recipe(Path("r.yaml"))
"""


@pytest.mark.parametrize("trial", sorted(TRIALS))
def test_each_to_add_recipe_is_true(trial: str, tmp_path: Path, tiny_model: Path):
    import re
    import shutil
    import subprocess
    import sys

    edits = TRIALS[trial]
    assert len(edits) <= 2, f"adding a {trial} touches {len(edits)} files (docs/ARCHITECTURE.md promises at most 2)"
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "neat_data", ignore=shutil.ignore_patterns("__pycache__", "_bundled"))
    for folder in ("prompts", "pipelines"):
        shutil.copytree(REPO / folder, copy / folder)
    for relative, replacements in edits.items():
        path = copy / "neat_data" / relative
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        for pattern, replacement in replacements:
            text, count = re.subn(pattern, replacement, text, count=1)
            assert count == 1, f"{trial}: {relative} no longer has {pattern!r}: update the trial and docs/ARCHITECTURE.md"
        path.write_text(text, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    check = TRIAL_PRELUDE + TRIAL_CHECKS[trial]
    env = {**os.environ, "PYTHONPATH": str(copy), "TRIAL_MODEL": str(tiny_model)}
    finished = subprocess.run([sys.executable, "-c", check], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
