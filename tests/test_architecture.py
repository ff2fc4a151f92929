"""The shape of the code, checked: no import cycle in neat_data/, lower layers never import upper ones, every list of
names (backends, scorers, export formats, losses, pair strategies) is defined once and the CLI offers exactly it.
docs/ARCHITECTURE.md describes the layers these tests hold the code to."""

from __future__ import annotations

import ast
import os
import re
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


def test_core_imports_nothing_above_it():
    """core/ is the foundation under lm/ and safety/ as well: it imports only core (no cycle through a neighbour)."""
    known = modules()
    wrong = [
        f"{name} imports {target}"
        for name, path in known.items()
        if name.startswith("neat_data.core")
        for target in imports_of(path, known)
        if not target.startswith("neat_data.core")
    ]
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
    from neat_data.stages.rank.stage import PairStrategy
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
    from neat_data.stages.rank.stage import PairStrategy
    from neat_data.train.loss import LossName

    lists = {
        "backends": (BackendName, "engines/__init__.py"),
        "scorers": (ScorerName, "scorers/__init__.py"),
        "safety metrics": (MetricName, "safety/metrics.py"),
        "stage kinds": (StageKindName, "rounds/stages.py"),
        "export formats": (ExportFormat, "stages/export.py"),
        "pair strategies": (PairStrategy, "stages/rank/stage.py"),
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


# The run folder's tables and files (neat_data/core/layout.py names each once): a folder joined onto a path, a file name
# of its own, or a path spelled inside a string ("ranked/pairs.parquet", f"export/{fmt}") anywhere else is a second copy.
RUN_FOLDERS = ("generations", "scored", "ranked", "export", "model", "eval", "eval-reseeded", "report", "batches", "prompts", "suites")
RUN_FILES = ("lists.parquet", "pairs.parquet", "dropped.parquet", "train.parquet", "audit.json", "audit.md", "audit.png")
RUN_FILES += ("metrics.json", "neat_train.json", "heldout.jsonl", "prompts.jsonl")


def run_folder_spellings(path: Path) -> list[str]:
    import re

    inside = re.compile(rf"(?<![\w./-])({'|'.join(RUN_FOLDERS)})/([\w-]+/)*([\w-]+\.(parquet|jsonl?|md|png)|{{|$)")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            left = node.left
            while isinstance(left, ast.BinOp):
                left = left.left
            bundled = isinstance(left, ast.Call) and getattr(left.func, "id", "") == "bundled_dir"  # the package's data
            for side in (node.left, node.right):
                scratch = path == PACKAGE / "core" / "models.py"  # a GGUF's conversion folder, not a run folder
                if not (bundled or scratch) and isinstance(side, ast.Constant) and side.value in RUN_FOLDERS + RUN_FILES:
                    found.append(f"{node.lineno}: / {side.value!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value in RUN_FILES or inside.search(node.value):
                found.append(f"{node.lineno}: {node.value[:60]!r}")
    return found


def test_the_run_folder_layout_is_spelled_only_in_core_layout():
    """Each table and file of a run folder is named in neat_data/core/layout.py and asked for everywhere else, so that a
    stage, merge, the viewer, the trainer and the round runner cannot disagree about where a table lies."""
    spelled = {
        path.relative_to(PACKAGE).as_posix(): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "core" / "layout.py" and (found := run_folder_spellings(path))
    }
    assert spelled == {}, f"run-folder paths spelled outside core/layout.py: {spelled}"


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


def test_no_module_digs_in_a_manifest_entry_as_a_dict():
    """A stage's manifest entry is a typed record (core/manifest.py: StageRecord and one class per kind): read as
    `manifest.stage(name).config`, `manifest.record("score", ScoreRecord).scorer`, never dug out of nested dicts."""
    digs = re.compile(r'\.get\("config"|stages\.get\("\w+", \{\}\)|\.stage\([^)]*\)\.get\(|stages\["\w+"\]\[')
    hits = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if digs.search(line)
    ]
    assert not hits, hits


# ------------------------------------------------------------------- the "to add …" recipes of docs/ARCHITECTURE.md
# Each trial applies one recipe, as the document writes it, to a copy of the package (edits in at most two files),
# then shows in a fresh process that the new name reaches every place the document promises. A recipe that needs a
# further edit somewhere fails here.

TRIALS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "audit check": {
        "stages/audit/stage.py": [
            (r"(AuditCheck = Literal\[[^\]]*)\]", r'\1, "empty"]'),
            (
                r"\n(    sample_prompts: int = Field\()",
                '\n    empty_max: float = Field(0.0, ge=0.0, le=1.0, description="empty check: share of empty responses, at most.")\n\\1',
            ),
            (
                r'("pairs": measures\.figure\(sides\.size, [^\n]*\),)',
                r'\1\n            "empty": measures.figure(float(np.mean([not t for t in candidates.responses.to_pylist()])), "share of empty responses"),',
            ),
            (
                r"(CHECK_RULES: dict\[[^\n]*\] = \{)",
                r'\1\n    "empty": (("counts", "empty"), "max", "empty_max", "share of empty responses"),',
            ),
        ],
    },
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

TRIALS["stage"] = {
    "stages/trial.py": [
        (
            r"\A\Z",
            "from pathlib import Path\n\nfrom pydantic import BaseModel\n\nfrom neat_data.core.errors import EXIT_NOTHING_OK, NeatError\n"
            "from neat_data.core.manifest import PlainRecord\nfrom neat_data.core.stage import Stage, StageResult\n\n\n"
            "class TrialConfig(BaseModel):\n    run: Path\n    words: int = 2\n\n\n"
            "def run_trial(config: TrialConfig, argv: list[str] | None) -> StageResult:\n"
            "    failed = NeatError('no words', file=config.run, exit_code=EXIT_NOTHING_OK) if not config.words else None\n"
            "    return StageResult([f'trial: {config.words} words in {config.run}'], notes=['a note'], failed=failed)\n\n\n"
            "TRIAL = Stage('trial', TrialConfig, run_trial, lambda c: [c.run / 'scored'], lambda c: [c.run / 'trial'], PlainRecord, 'trial')\n",
        )
    ],
    "cli/stages.py": [
        (r"(from neat_data.stages.score import ScoreConfig\n)", r"\1from neat_data.stages.trial import TRIAL, TrialConfig\n"),
        (
            r"\Z",
            "\n\n@cli.command()\n@click.argument('run', type=click.Path(path_type=Path))\n@config_options(TrialConfig, skip=('run',))\n"
            "def trial(run: Path, **options: Any) -> None:\n    echo_result(TRIAL.run(build_config(TrialConfig, options, run=run), command_argv()))\n",
        ),
    ],
}

TRIALS["backend"] = {
    "engines/trial_backend.py": [
        (
            r"\A\Z",
            "from collections.abc import Iterable, Iterator\nfrom typing import Any\n\nfrom pydantic import BaseModel, ConfigDict, Field\n\n"
            "from neat_data.engines.base import Backend, Completion, GenerationRequest, RequestResult, Sampling\n\n\n"
            'class TrialOptions(BaseModel):\n    """Options of the trial backend (one fixed answer)."""\n\n    model_config = ConfigDict(extra=\'forbid\')\n\n'
            "    trial_text: str = Field('a fixed answer', description='trial: the answer to every request.')\n\n\n"
            "class TrialBackend(Backend):\n    name = 'trial'\n\n    def __init__(self, model: str, text: str):\n        self.model, self.text = model, text\n\n"
            "    @classmethod\n    def from_options(cls, model: str, options: TrialOptions, **_: Any) -> 'TrialBackend':\n"
            "        return cls(model, options.trial_text)\n\n"
            "    def generate(self, requests: Iterable[GenerationRequest], sampling: Sampling) -> Iterator[tuple[int, RequestResult]]:\n"
            "        for index, request in enumerate(requests):\n"
            "            yield index, RequestResult([Completion(self.text, 'stop', 5, 3)] * request.n)\n\n"
            "    def close(self) -> None:\n        pass\n",
        )
    ],
    "engines/__init__.py": [
        (
            r"(from neat_data.engines.vllm_batch import VLLMBatchBackend\n)",
            r"\1from neat_data.engines.trial_backend import TrialBackend, TrialOptions\n",
        ),
        (r"(BackendName = Literal\[[^\]]*)\]", r'\1, "trial"]'),
        (r"(class BackendOptions\([^)]*)\)", r"\1, TrialOptions)"),
        (
            r"(BACKENDS: dict\[[^\n]*\] = \{)",
            r'\1\n    "trial": BackendEntry(TrialBackend.from_options, server=True, discount=0.25, package="click"),',
        ),
    ],
}

TRIAL_CHECKS = {
    "backend": """
from importlib.metadata import version
from click.testing import CliRunner
from neat_data.cli import cli
from neat_data.core import layout
from neat_data.core.manifest import GenerateRecord, read_manifest
from neat_data.stages.provenance import determinism
shown = CliRunner().invoke(cli, ["generate", "--help"]).output
section = shown[shown.index("Options of the trial backend (one fixed answer):"):].split("\\n\\n")[0]
assert "--trial-text" in section and "trial: the answer to every request." in section, shown
recipe = load(generate={"backend": "trial", "trial_text": "from a recipe"})
assert [s.config.trial_text for s in plan_round(recipe, Path("runs/t"), 1) if s.kind.name == "generate"] == ["from a recipe"]
args = ["generate", "--backend", "trial", "--trial-text", "always this", "--model", "m", "--prompts", str(prompts), "--out", "run",
        "--num-pos", "1", "--num-neg", "1", "--price-in", "1", "--price-out", "2", "--no-progress"]
dry = CliRunner().invoke(cli, [*args, "--dry-run"])
assert dry.exit_code == 0 and "16 rows for 8 prompts on m (trial)" in dry.output, dry.output
assert "after the batch discount of 25%" in dry.output, dry.output  # costs read the entry's discount
capped = CliRunner().invoke(cli, [*args, "--max-total-tokens", "10"])
assert capped.exit_code == 0, capped.output  # its entry takes no request ahead of the first answer: a cap is allowed
generated = CliRunner().invoke(cli, [*args, "--out", "run2"])
assert generated.exit_code == 0, generated.output
rows = layout.GENERATIONS.rows(Path("run2")).read(["response", "status", "model"]).to_pylist()
assert len(rows) == 16 and {(row["response"], row["status"], row["model"]) for row in rows} == {("always this", "ok", "m")}, rows
manifest = read_manifest(Path("run2"))
assert manifest.record("generate", GenerateRecord).usage["prices"]["discount"] == 0.25
record = determinism(manifest)
assert record["backend"] == "trial" and record["engine_version"] == version("click"), record  # provenance reads its package
assert record["bitwise_reproducible"].startswith("not expected: the responses come from a server"), record  # and server=True
""",
    "stage": """
from click.testing import CliRunner
from neat_data.cli import cli
result = CliRunner().invoke(cli, ["trial", "r", "--words", "3"])
assert result.exit_code == 0 and result.stdout == "trial: 3 words in r\\n" and "a note" in result.output, result.output
result = CliRunner().invoke(cli, ["trial", "r", "--words", "0"])
assert result.exit_code == 3 and "trial: 0 words in r" in result.output and "error: r: no words" in result.output, result.output
""",
    "audit check": """
from click.testing import CliRunner
from neat_data.cli import cli
from neat_data.core.runfolder import ShardedTable
from neat_data.core.schemas import SCORED
from neat_data.stages.rank.stage import RankConfig, run_rank
recipe = load(audit={"fail_on": ["empty"], "empty_max": 0.3})
assert [(s.config.fail_on, s.config.empty_max) for s in plan_round(recipe, Path("runs/t"), 1) if s.kind.name == "audit"] == [(["empty"], 0.3)]
rows = []
for p in range(8):  # a quarter of the answers empty
    for steering, response, score in (("pos", f"answer {p} in words", 1.0), ("neg", "" if p % 2 else f"other {p} reply", 0.0)):
        row = {name: None for name in SCORED.names}
        row.update(key=f"p{p}-{steering}", prompt_id=f"p{p}", prompt=[{"role": "user", "content": f"q{p}"}], steering=steering,
                   sample_index=0, response=response, finish_reason="stop", status="ok", completion_tokens=len(response.split()),
                   score=score, raw_score=score, score_status="ok")
        rows.append(row)
ShardedTable(Path("run") / "scored", SCORED).append(rows)
run_rank(RankConfig(run=Path("run")))
stopped = CliRunner().invoke(cli, ["audit", "run", "--resamples", "100", "--fail-on", "empty"])
assert stopped.exit_code == 5, stopped.output
assert "empty: FAIL — share of empty responses 0.250 (pass when ≤ 0; --empty-max)" in stopped.output, stopped.output
assert "audit check failed: empty = 0.250 (threshold: share of empty responses ≤ 0)" in stopped.output.splitlines()[-1]
passed = CliRunner().invoke(cli, ["audit", "run", "--resamples", "100", "--fail-on", "empty", "--empty-max", "0.3"])
assert passed.exit_code == 0 and "empty: PASS" in passed.output, passed.output
""",
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
