"""Every bundled recipe plans the same stages as before the stage objects (issue 26): the same labels, kinds, typed
configs and reads for rounds 0..2 of the recipe and of each variant. The snapshot was first written by the code at main
f032316 (`plans()` below run there), so reads derived from what earlier stages write equalled the hand-written ones;
it was rewritten once, on purpose, when the audit became a planned stage (a new stage each round, read by the exports),
the trainer's input became the exact file the plan names, and new config fields arrived with their defaults (a
preference file's answers, rank's dataset order, the audit's source threshold) — every `values` entry of an existing stage
otherwise unchanged; the recipes added since (expand.yaml) were added to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neat_data.rounds.recipe import load_recipe, plan_round, variant_recipe

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "tests" / "data" / "plan_snapshot.json"


def plans() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        recipe = load_recipe(path)
        for name, variant in [("", recipe)] + [(f".{v}", variant_recipe(recipe, v, path)) for v in recipe.variants]:
            for k in range(3):
                out[f"{path.name}{name} round {k}"] = [
                    {
                        "label": stage.label,
                        "kind": stage.kind.name,
                        "values": stage.config_json(),
                        "config": stage.config.model_dump(mode="json"),
                        "reads": [list(read) for read in stage.reads],
                    }
                    for stage in plan_round(variant, variant.run_dir(), k, path=path)
                ]
    return json.loads(json.dumps(out, default=str).replace(str(ROOT), "<repo>"))


def test_bundled_recipes_plan_as_before() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    got = plans()
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert got[key] == expected[key], key
