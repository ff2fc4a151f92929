"""The stages a round runs: the list of the stage objects (`neat_data.core.stage.Stage`), each declared in its own
module with its config class, its run (→ `StageResult`), the folders it reads and writes and its manifest record.

    STAGES["rank"].run(RankConfig(...), argv)    # → StageResult: the lines `neat-data rank` and `neat-data run` print
    PlannedStage("export-trl", STAGES["export"], ExportConfig(...), {...}, reads=[("rank", 1), ("score", 1)])

A round is a list of `PlannedStage`s (`neat_data.rounds.recipe.plan_round`): a label (the folder name of its config
and log, and its key in the run manifest: "export-trl", "evaluate-reseeded"), the stage it is an instance of, its
*typed* config, and the (label, round) of the stages whose output it reads — derived by plan_round from the folders
each stage reads and the earlier ones write. `neat-data stage KIND CONFIG.json` (what the runner starts, one process
per stage) validates the JSON with the stage's config class and calls `run`. Nothing travels as a string to be parsed
back: the label is only a name.

To add a stage to the rounds: its object here, its recipe section, and its config in `plan_round`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from neat_data.core.stage import Stage
from neat_data.stages.audit.stage import AUDIT
from neat_data.stages.evaluate import EVALUATE
from neat_data.stages.export import EXPORT
from neat_data.stages.fixed import FIXED
from neat_data.stages.generate.stage import GENERATE
from neat_data.stages.rank.stage import RANK
from neat_data.stages.score import SCORE
from neat_data.train.trainer import TRAIN

StageKindName = Literal["generate", "score", "rank", "audit", "export", "train", "evaluate", "fixed"]
STAGES: dict[str, Stage] = {stage.name: stage for stage in (GENERATE, FIXED, SCORE, RANK, AUDIT, EXPORT, TRAIN, EVALUATE)}
assert set(STAGES) == set(get_args(StageKindName)), "stage kinds drifted"


@dataclass
class PlannedStage:
    label: str
    kind: Stage
    config: Any  # an instance of kind.config_class, validated from `values`
    values: dict[str, Any]  # what the plan set, as the recipe wrote it: round_NN/configs/<label>.json and the stage key
    reads: list[tuple[str, int]] = field(default_factory=list)  # (label, round) of the stages whose output it reads
    folder: Path = Path()  # its round folder: what it writes lies under it

    def config_json(self) -> dict[str, Any]:
        """The config as written to round_NN/configs/<label>.json: the values the plan set (defaults stay implicit, so
        a stage's key changes neither when a default it never used is added nor with how pydantic coerces a value)."""
        return self.values

    def outputs(self) -> list[str]:
        """The folders of the round folder that hold its result."""
        return [str(path.relative_to(self.folder)) for path in self.kind.writes(self.config)]

    def manifest_entries(self) -> list[str]:
        return self.kind.manifest_entries(self.config)
