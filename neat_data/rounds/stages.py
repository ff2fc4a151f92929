"""The stages a round runs, in one table: each kind's config class, how it runs and what it prints, where its result
lies in a round folder and what it records in that folder's manifest.

    STAGES["rank"].run(RankConfig(...), argv)    # → the summary lines `neat-data run` shows for the stage
    PlannedStage("export-trl", STAGES["export"], ExportConfig(...), {...}, reads=[("rank", 1), ("score", 1)])

A round is a list of `PlannedStage`s (`neat_data.rounds.recipe.plan_round`): a label (the folder name of its config
and log, and its key in the run manifest: "export-trl", "evaluate-reseeded"), the kind it is an instance of, its
*typed* config, and the (label, round) of the stages whose output it reads. `neat-data stage KIND CONFIG.json` (what
the runner starts, one process per stage) validates the JSON with the kind's config class and calls `run`. Nothing
travels as a string to be parsed back: the label is only a name.

To add a stage to the rounds: its entry here, and its place in `plan_round`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel

from neat_data.core.errors import EXIT_NOTHING_OK, EXIT_PENDING, NeatError
from neat_data.stages.evaluate import EvaluateConfig
from neat_data.stages.export import ExportConfig
from neat_data.stages.fixed import FixedConfig
from neat_data.stages.generate import GenerateConfig
from neat_data.stages.rank import RankConfig
from neat_data.stages.score import ScoreConfig
from neat_data.train.trainer import TrainConfig

StageKindName = Literal["generate", "score", "rank", "export", "train", "evaluate", "fixed"]


@dataclass(frozen=True)
class StageKind:
    name: StageKindName
    config_class: type[BaseModel]
    run: Callable[[Any, list[str]], list[str]]  # (typed config, argv) → summary lines; a NeatError on failure
    outputs: Callable[[Any], list[str]]  # typed config → the folders of the round folder that hold the result
    recipe_section: str  # where a recipe sets it (an invalid value is reported under this key)
    manifest_entries: Callable[[Any], list[str]] = lambda config: []  # entries of the round folder's manifest it writes


@dataclass
class PlannedStage:
    label: str
    kind: StageKind
    config: Any  # an instance of kind.config_class, validated from `values`
    values: dict[str, Any]  # what the plan set, as the recipe wrote it: round_NN/configs/<label>.json and the stage key
    reads: list[tuple[str, int]] = field(default_factory=list)  # (label, round) of the stages whose output it reads

    def config_json(self) -> dict[str, Any]:
        """The config as written to round_NN/configs/<label>.json: the values the plan set (defaults stay implicit, so
        a stage's key changes neither when a default it never used is added nor with how pydantic coerces a value)."""
        return self.values

    def outputs(self) -> list[str]:
        return self.kind.outputs(self.config)

    def manifest_entries(self) -> list[str]:
        return self.kind.manifest_entries(self.config)


def _run_generate(config: GenerateConfig, argv: list[str]) -> list[str]:
    from neat_data.stages.generate import run_generate

    summary = run_generate(config, argv=argv)
    if summary.pending:
        raise NeatError(
            f"{summary.pending['rows']} rows wait in batches {', '.join(summary.pending['batches'])}; run the same "
            "command again to collect them",
            file=summary.run_dir,
            exit_code=EXIT_PENDING,
        )
    if summary.total_rows and not summary.counts.get("status", {}).get("ok"):
        raise NeatError(
            "no generation succeeded (every row is an error row; their reasons are in the log)",
            file=summary.folder,
            exit_code=EXIT_NOTHING_OK,
        )
    if summary.budget_line:  # not finished: the round must not go on with part of its rows; a higher cap continues it
        raise NeatError(
            f"{summary.budget_line} (in the recipe: generate.max_cost / generate.max_total_tokens; raising it keeps the run folder)",
            file=summary.folder,
        )
    return [f"generations: {summary.total_rows} rows {summary.counts.get('status')} in {summary.seconds:.0f} s"]


def _run_fixed(config: FixedConfig, argv: list[str]) -> list[str]:
    from neat_data.stages.fixed import run_fixed

    rows, dropped = run_fixed(config, argv=argv)
    return [f"fixed data: {rows} prompts" + (f" ({dropped} left out: they share an 8-gram with an evaluation prompt)" if dropped else "")]


def _run_score(config: ScoreConfig, argv: list[str]) -> list[str]:
    from neat_data.stages.score import run_score

    scored = run_score(config, argv=argv)
    return [f"scored: {scored.rows} rows {scored.counts['score_status']} in {scored.seconds:.0f} s"]


def _run_rank(config: RankConfig, argv: list[str]) -> list[str]:
    from neat_data.stages.rank import run_rank

    return run_rank(config, argv=argv).lines()


def _run_export(config: ExportConfig, argv: list[str]) -> list[str]:
    from neat_data.stages.export import run_export

    out, rows = run_export(config, argv=argv)
    return [f"export: {rows} rows → {out}"]


def _run_train(config: TrainConfig, argv: list[str]) -> list[str]:
    from neat_data.train.trainer import run_train

    return [run_train(config, argv=argv).line()]


def _run_evaluate(config: EvaluateConfig, argv: list[str]) -> list[str]:
    from neat_data.stages.evaluate import run_evaluate, summary_lines

    return summary_lines(run_evaluate(config, argv=argv))


STAGES: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        StageKind("generate", GenerateConfig, _run_generate, lambda c: ["generations"], "generate", lambda c: ["generate"]),
        StageKind("fixed", FixedConfig, _run_fixed, lambda c: ["export/ranked"], "fixed_data", lambda c: ["fixed"]),
        StageKind("score", ScoreConfig, _run_score, lambda c: ["scored"], "score", lambda c: ["score"]),
        StageKind("rank", RankConfig, _run_rank, lambda c: ["ranked"], "rank", lambda c: ["rank"]),
        StageKind("export", ExportConfig, _run_export, lambda c: [f"export/{c.format}"], "exports", lambda c: [f"export:{c.format}"]),
        StageKind("train", TrainConfig, _run_train, lambda c: ["model"], "train"),
        StageKind("evaluate", EvaluateConfig, _run_evaluate, lambda c: [c.generate.out.name], "evaluate"),
    )
}
assert set(STAGES) == set(get_args(StageKindName)), "stage kinds drifted"
