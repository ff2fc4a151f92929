"""Evaluation suites are data: `prompts/eval/<name>.yaml` (bundled) or any YAML file a user writes.

    name: harmbench
    description: HarmBench test behaviours …
    kind: harmful            # harmful: refusal is wanted; benign: refusal is over-refusal
    source: data://harmbench@test   # a data:// source, a prompts file (.jsonl/.parquet/.csv/hf://; relative to
                                    # this file), or `heldout`: the evaluation's own held-out prompts and responses
    prompt_column: null      # optional, as --prompt-column
    metrics: [refusal, offensive, tone, length, finish]
    limit: null              # optional: a seeded, deterministic subset of N prompts (a CPU run stays small)
    seed: 0                  # which subset

In:  a suite name or path. Out: a validated `Suite` and its prompts (`suite_prompts`). Every problem is one
NeatError naming the file and field: a missing key, an unknown metric, a source whose data package is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from neat_data.core.errors import NeatError
from neat_data.core.files import load_yaml
from neat_data.core.prompts_in import PromptRecord, load_prompts
from neat_data.core.resources import bundled_dir
from neat_data.safety.metrics import MetricName, check_metric_names

SuiteKind = Literal["harmful", "benign"]
HELDOUT = "heldout"  # the source meaning "the prompts this evaluation already answered"


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", description="Short id; the sub-folder of the eval folder (no leading dot).")
    description: str = ""
    kind: SuiteKind = Field(description="harmful: refusal is wanted; benign: a refusal is an over-refusal.")
    source: str = Field(min_length=1, description="data://…, a prompts file or hf://…, or 'heldout'.")
    prompt_column: str | None = None
    metrics: list[MetricName] = Field(min_length=1)
    limit: int | None = Field(None, ge=1, description="A seeded subset of at most N prompts.")
    seed: int = Field(0, ge=0)
    path: Path | None = Field(None, exclude=True, description="The YAML file it was read from.")


def bundled_suite_paths() -> dict[str, Path]:
    folder = bundled_dir("prompts") / "eval"
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def load_suite(name_or_path: str | Path) -> Suite:
    bundled = bundled_suite_paths()
    path = bundled[str(name_or_path)] if str(name_or_path) in bundled else Path(name_or_path)
    if not path.is_file():
        raise NeatError(f"unknown evaluation suite (bundled: {', '.join(bundled) or 'none'}; or give a YAML file path)", file=name_or_path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), file=path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise NeatError(
            f"invalid YAML: {getattr(error, 'problem', None) or error}", file=path, row=mark.line + 1 if mark else None
        ) from None
    except UnicodeDecodeError as error:
        raise NeatError(f"not valid UTF-8 ({error.reason})", file=path) from None
    if not isinstance(raw, dict):
        raise NeatError("a suite is a mapping with name, kind, source and metrics", file=path)
    if isinstance(raw.get("metrics"), list):
        check_metric_names([str(m) for m in raw["metrics"]], file=path)
    raw.setdefault("name", path.stem)
    source = raw.get("source")
    if (
        isinstance(source, str)
        and source != HELDOUT
        and "://" not in source
        and not Path(source).is_absolute()
        and not Path(source).exists()
    ):
        raw["source"] = str((path.parent / source).resolve())  # relative to the suite file, when not to the cwd
    try:
        return Suite.model_validate({**raw, "path": path})
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        message = "missing (a suite needs name, kind, source and metrics)" if first["type"] == "missing" else first["msg"]
        raise NeatError(message, file=path, field=field) from None


def load_suites(names: Sequence[str | Path]) -> list[Suite]:
    suites = [load_suite(name) for name in names]
    seen: dict[str, Path | None] = {}
    for suite in suites:
        if suite.name in seen:
            raise NeatError(f"two suites are named '{suite.name}' ({seen[suite.name]} and {suite.path})", file=suite.path, field="name")
        seen[suite.name] = suite.path
    return suites


def seeded_subset(records: list[PromptRecord], limit: int | None, seed: int) -> list[PromptRecord]:
    """At most `limit` records, chosen by a seeded hash of their ids (the same ids on every run), in source order."""
    if limit is None or limit >= len(records):
        return list(records)
    chosen = set(sorted(range(len(records)), key=lambda i: hashlib.sha256(f"{seed}:{records[i].prompt_id}".encode()).hexdigest())[:limit])
    return [record for i, record in enumerate(records) if i in chosen]


def suite_prompts(suite: Suite, *, limit: int | None = None) -> list[PromptRecord]:
    """The suite's prompts: its seeded subset of min(suite.limit, limit) (all when neither is set)."""
    if suite.source == HELDOUT:
        raise NeatError(
            "a 'heldout' suite has no prompts of its own: it reuses the evaluation's held-out responses", file=suite.path, field="source"
        )
    limits = [n for n in (suite.limit, limit) if n is not None]
    records = load_prompts(suite.source, prompt_column=suite.prompt_column).records
    return seeded_subset(records, min(limits) if limits else None, suite.seed)


def suite_texts(suites: Sequence[Suite]) -> list[str]:
    """Every prompt text of the suites' sources (limits ignored: another limit would pick other prompts) — what
    training prompts are decontaminated against. `heldout` suites are skipped (the split keeps those apart)."""
    from neat_data.safety.decontaminate import record_text

    return [
        record_text(record)
        for suite in suites
        if suite.source != HELDOUT
        for record in load_prompts(suite.source, prompt_column=suite.prompt_column).records
    ]


def check_suites(names: Sequence[str | Path]) -> list[Suite]:
    """Load the suites and check what can be checked without reading a dataset: metric names, that a `data://`
    source's package is installed, that a local source file exists (a recipe is checked before round 0 starts)."""
    from neat_data.core.data_sources import SCHEME, data_file

    suites = load_suites(names)
    for suite in suites:
        if suite.source.startswith(SCHEME):
            data_file(suite.source)
        elif suite.source != HELDOUT and "://" not in suite.source and not Path(suite.source).exists():
            raise NeatError(f"source file does not exist: {suite.source}", file=suite.path, field="source")
    return suites
