"""A stage, declared once: its config class, the paths it reads and writes, its run and the record it leaves in the
manifest; and the one result every stage's run returns.

    SCORE = Stage("score", ScoreConfig, run, reads=lambda c: [Path(c.run) / "generations"], writes=..., record=ScoreRecord)
    result = SCORE.run(config, argv)    # StageResult: the lines the command and `neat-data run` both print
    result.finish(in_round=True)        # raises what stops it: nothing usable came out, or (in a round) rows still wait

`rounds/plan_round` wires the configs and derives what each planned stage reads from the paths earlier stages write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from neat_data.core.errors import NeatError
from neat_data.core.manifest import StageRecord


@dataclass
class StageResult:
    lines: list[str]  # the summary: printed by the stage's command and by `neat-data run`, the same lines
    record: StageRecord | None = None  # what the stage recorded in its folder's manifest
    notes: list[str] = field(default_factory=list)  # said on stderr
    failed: NeatError | None = None  # nothing usable came out (every row an error row): the command and a round stop
    unfinished: NeatError | None = None  # stopped short on purpose (rows wait in batches, a cap reached): the command
    # says so and ends 0 (the same command run again goes on); a round cannot go on with part of its rows

    def finish(self, *, in_round: bool) -> None:
        if self.failed is not None:
            raise self.failed
        if in_round and self.unfinished is not None:
            raise self.unfinished


@dataclass(frozen=True)
class Stage:
    name: str  # its kind: rounds/stages.py::StageKindName
    config_class: type[BaseModel]
    run: Callable[[Any, list[str] | None], StageResult]  # (typed config, argv) → its result; a NeatError on failure
    reads: Callable[[Any], list[Path]]  # config → the folders it reads (a round's: what plan_round derives `reads` from)
    writes: Callable[[Any], list[Path]]  # config → the folders it writes
    record: type[StageRecord] | None  # its manifest entry's class (None: it records in its own files)
    recipe_section: str  # where a recipe sets it (an invalid value is reported under this key)
    manifest_entries: Callable[[Any], list[str]] = lambda config: []  # the keys of its folder's manifest it writes
    # its recipe section may change on a run folder that has finished it (the section is not part of the recipe's
    # identity): a changed stage key runs it again, and every stage that reads it (the audit's gate)
    section_may_change: bool = False
