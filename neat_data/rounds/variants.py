"""Variants of one recipe, run side by side, sharing every stage whose inputs are identical.

In:  a recipe with `variants:` (name → overrides, dotted keys as in `--set`), e.g. pipelines/ablation.yaml.
Out: runs/<name>/<variant>/ (an ordinary `neat-data run` folder per variant), runs/<name>/shared.json (which finished
     stage result answers which stage key) and, from neat_data.rounds.comparison, runs/<name>/comparison.{json,md,png}.

A stage's **key** is a hash of its name, its config with the variant's own folder written as `<run>` (so two variants'
configs compare equal when they ask for the same thing), and the keys of the stages whose output it reads. Two
variants that sample the same way in round 1 have the same generate key (its only input is the base model), the same
score key, and so on until their recipes differ; from there each key is its own. A stage whose key is already
finished in another variant's folder is not run again: its output folder is hard-linked into this variant's round
folder (copied where links are not possible) and recorded with 0 seconds and where it came from. Round 0 (the base
model's evaluation) is the same for every variant, so it runs once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from neat_data.core.errors import NeatError
from neat_data.core.files import atomic_write_json
from neat_data.core.layout import round_folder
from neat_data.core.manifest import read_manifest, update_manifest
from neat_data.rounds.stages import PlannedStage

# Recipe keys a variant may not change: the variants are compared on one held-out split, one evaluation and round 0.
# `redo` too: its passes rewrite the generations folder that a variant sharing the generate stage links in.
SHARED_KEYS = ("name", "out", "variants", "prompts", "seed", "model", "rounds", "evaluate", "pairs", "redo")


def _abstract(value: Any, run_dir: str) -> Any:
    if isinstance(value, str):
        return value.replace(run_dir, "<run>")
    if isinstance(value, dict):
        return {key: _abstract(item, run_dir) for key, item in value.items()}
    if isinstance(value, list):
        return [_abstract(item, run_dir) for item in value]
    return value


def stage_key(name: str, config: dict[str, Any], run_dir: Path, inputs: list[str]) -> str:
    payload = {"stage": name, "config": _abstract(config, str(run_dir)), "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]


class StageCache:
    """The finished stages of every variant of one parent run, by key (`shared.json` in the parent folder)."""

    def __init__(self, parent: Path):
        self.path = parent / "shared.json"

    def _index(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            index = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise NeatError(f"not a valid stage index ({error}); delete it to run shared stages again", file=self.path) from None
        return index if isinstance(index, dict) else {}

    def find(self, key: str, run_dir: Path) -> dict[str, Any] | None:
        """Where another variant finished the stage with this key, if it still holds the result."""
        entry = self._index().get(key)
        if not entry or Path(entry["run"]) == run_dir:
            return None
        source = round_folder(entry["run"], entry["round"])
        return entry if all((source / folder).exists() for folder in entry.get("outputs") or ["?"]) else None

    def record(self, key: str, run_dir: Path, k: int, stage: PlannedStage) -> None:
        index = self._index()
        index.setdefault(key, {"run": str(run_dir), "round": k, "stage": stage.label, "outputs": stage.outputs()})
        atomic_write_json(self.path, index)


def link_tree(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source` made of hard links (files are never written again once finished, so sharing
    their inodes is safe); built aside and renamed into place, so it is whole or absent."""
    staging = target.with_name(f".{target.name}.linking")
    shutil.rmtree(staging, ignore_errors=True)
    for folder, _, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        (staging / relative).mkdir(parents=True, exist_ok=True)
        for file in files:
            if file.endswith(".tmp") or file.startswith(".lock"):
                continue
            try:
                os.link(Path(folder) / file, staging / relative / file)
            except OSError:  # another file system: copy
                shutil.copy2(Path(folder) / file, staging / relative / file)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)


def materialize(stage: PlannedStage, entry: dict[str, Any], folder: Path) -> None:
    """Put another variant's finished result of `stage` into this round `folder`, with its manifest records."""
    source = round_folder(entry["run"], entry["round"])
    for relative in stage.outputs():
        link_tree(source / relative, folder / relative)
    records = read_manifest(source).stages
    for entry_name in stage.manifest_entries():
        if entry_name in records:
            update_manifest(folder, entry_name, records[entry_name])


def variant_overrides(variants: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """name → `--set`-style overrides ("a.b=value"), with the keys every variant must share refused."""
    overrides: dict[str, list[str]] = {}
    for name, changes in variants.items():
        flat: list[str] = []
        for key, value in _flatten(changes or {}):
            if key.split(".")[0] in SHARED_KEYS:
                raise ValueError(
                    f"variant '{name}' changes '{key}': variants share the prompts, split, model, rounds and "
                    "evaluation (compare them on the same footing)"
                )
            flat.append(f"{key}={json.dumps(value)}")
        overrides[name] = flat
    return overrides


def _flatten(changes: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """{"train": {"loss": "dpo"}, "rank.pairs": "pos-vs-neg"} → [("train.loss", "dpo"), ("rank.pairs", "pos-vs-neg")]."""
    items: list[tuple[str, Any]] = []
    for key, value in changes.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(value, dotted + ".")
        else:
            items.append((dotted, value))
    return items
