"""The parts of the page that only a `neat-data run` folder has: the rounds table and curves, the held-out and suite
answers.

In:  runs/<name>/round_NN/eval/metrics.json (+ rounds.json's columns through `round_report.round_rows`),
     round_NN/eval/{generations,scored}/, round_NN/eval/suites/<name>/{metrics.parquet,prompts.jsonl},
     prompts/heldout.jsonl.
Out: JSON-ready dicts: `rounds_section` (every numeric metric, flattened: nested keys joined with '.', so
     metrics added later — per-suite safety metrics, say — appear without changes here; two-number lists are
     intervals, attached to the metric they bound), `heldout_section` (per held-out prompt, the answer of
     the base model and of each round, side by side) and `suite_sections` (the same per evaluation suite, each
     answer with the refusal / offensiveness / tone values the suite's metrics gave it).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from neat_data.core.layout import EVAL, EVAL_METRICS, EVAL_PROMPTS, EVAL_SUITES, GENERATIONS, HELDOUT, SCORED, round_folder
from neat_data.core.manifest import read_manifest
from neat_data.core.runfolder import read_json_object

ROUND_DIR = re.compile(r"^round_(\d{2,})$")
SKIPPED_METRIC_KEYS = ("config", "command")  # the evaluation's inputs, not its results
INTERVAL_SUFFIXES = ("_ci95", ".ci95", "_ci", ".ci", "_interval", ".interval")
VALUE_SUFFIXES = ("", "_mean", ".mean", ".value", ".estimate")


def round_folders(run_dir: Path) -> list[tuple[int, Path]]:
    folders = (
        [(int(m.group(1)), path) for path in run_dir.iterdir() if path.is_dir() and (m := ROUND_DIR.match(path.name))]
        if run_dir.is_dir()
        else []
    )
    return sorted(folders)


def is_rounds_run(run_dir: Path) -> bool:
    return read_manifest(run_dir).recipe is not None or bool(round_folders(run_dir))


def finite(value: Any) -> float | None:
    """A JSON-safe number: NaN and infinities become null (JSON has no NaN)."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def flatten_metrics(value: Any, prefix: str = "") -> tuple[dict[str, float | None], dict[str, list[float | None]]]:
    """(scalars, intervals) of a metrics.json: numeric leaves by dotted key; [low, high] lists as intervals."""
    scalars: dict[str, float | None] = {}
    intervals: dict[str, list[float | None]] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if not prefix and key in SKIPPED_METRIC_KEYS:
                continue
            inner_scalars, inner_intervals = flatten_metrics(item, f"{prefix}.{key}" if prefix else str(key))
            scalars.update(inner_scalars)
            intervals.update(inner_intervals)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        scalars[prefix] = finite(value)
    elif (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) or v is None for v in value)
    ):
        intervals[prefix] = [finite(v) for v in value]
    return scalars, intervals


def interval_owner(name: str, scalars: set[str]) -> str | None:
    """The metric an interval bounds: reward_ci95 → reward_mean, x.ci → x / x.mean / x.value."""
    for suffix in INTERVAL_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            for ending in VALUE_SUFFIXES:
                if base + ending in scalars:
                    return base + ending
    return None


def rounds_section(run_dir: Path) -> dict[str, Any]:
    """Per round: the rounds.json columns (pairs, train tokens, seconds) and every held-out metric, as series."""
    from neat_data.stages.round_report import round_rows

    folders = round_folders(run_dir)
    last = max([k for k, _ in folders] + [int(read_manifest(run_dir).rounds_planned or 0)])
    rows = round_rows(run_dir, last) if folders else []  # a bad metrics/train JSON: one line naming the file
    per_round = []
    for row in rows:
        scalars, intervals = flatten_metrics(read_json_object(EVAL_METRICS.path(EVAL.path(round_folder(run_dir, row["round"])))))
        for column in ("pairs", "train_prompts", "train_tokens", "train_tokens_per_s", "wall_seconds"):
            if row.get(column):  # 0 seconds = nothing ran yet
                scalars[f"run.{column}"] = finite(row[column])
        if scalars or intervals:  # rounds that have not started yet are left out
            per_round.append((row["round"], scalars, intervals))
    names = sorted({name for _, scalars, _ in per_round for name in scalars}, key=lambda n: (n.startswith("run."), n))
    interval_names = sorted({name for _, _, intervals in per_round for name in intervals})
    owners = {name: interval_owner(name, set(names)) for name in interval_names}
    series = []
    for name in names:
        bound = [i for i, owner in owners.items() if owner == name]
        series.append(
            {
                "name": name,
                "values": [scalars.get(name) for _, scalars, _ in per_round],
                "interval": bound[0] if bound else None,
                "low": [intervals.get(bound[0], [None, None])[0] for _, _, intervals in per_round] if bound else None,
                "high": [intervals.get(bound[0], [None, None])[1] for _, _, intervals in per_round] if bound else None,
            }
        )
    for name, owner in owners.items():
        if owner is None:  # an interval of no scalar: drawn as its band alone
            series.append(
                {
                    "name": name,
                    "values": [None] * len(per_round),
                    "interval": name,
                    "low": [intervals.get(name, [None, None])[0] for _, _, intervals in per_round],
                    "high": [intervals.get(name, [None, None])[1] for _, _, intervals in per_round],
                }
            )
    return {"rounds": [k for k, _, _ in per_round], "series": series}


def _shown_text(text: str | None, max_chars: int) -> dict[str, Any]:
    """An answer's text as the page holds it: cut to `max_chars`, with its full length (the page says it was cut)."""
    return {"text": text[:max_chars] if text is not None else None, "chars": len(text) if text is not None else 0}


def _answer(row: dict[str, Any], max_chars: int) -> dict[str, Any]:
    return {
        **_shown_text(row.get("response"), max_chars),
        "score": finite(row.get("score")),
        "status": row.get("status"),
        "score_status": row.get("score_status"),
        "error": row.get("error") or row.get("score_error"),
        "finish": row.get("finish_reason"),
        "tokens": row.get("completion_tokens"),
        "key": row.get("key"),
    }


def _eval_rows(folder: Path) -> list[dict[str, Any]]:
    for kind in (SCORED, GENERATIONS):
        table = kind.rows(folder)
        if table.shard_paths():
            return table.read().to_pylist()
    return []


def heldout_section(run_dir: Path, max_chars: int) -> dict[str, Any] | None:
    """Held-out prompts × (base model, base model under the positive prompt, each round): answer, score, status."""
    folders = [(k, EVAL.path(folder)) for k, folder in round_folders(run_dir) if EVAL.path(folder).is_dir()]
    if not folders:
        return None
    columns: list[dict[str, Any]] = []
    cells: dict[tuple[int, str], dict[str, Any]] = {}
    conversations: dict[str, list[list[str]]] = {}
    order: list[str] = []
    for k, folder in folders:
        rows = [r for r in _eval_rows(folder) if r.get("sample_index") == 0]
        steerings = ["none", "pos"] if k == 0 else ["none"]
        for steering in steerings:
            chosen = [r for r in rows if r.get("steering") == steering]
            if not chosen:
                continue
            column = len(columns)
            label = ("base model" if steering == "none" else "base model, positive prompt (perplexity set)") if k == 0 else f"round {k}"
            columns.append({"round": k, "steering": steering, "label": label})
            for row in chosen:
                cells[(column, row["prompt_id"])] = _answer(row, max_chars)
                if row["prompt_id"] not in conversations:
                    conversations[row["prompt_id"]] = [[m["role"], m["content"]] for m in row.get("prompt") or []]
                    order.append(row["prompt_id"])
    heldout_file = HELDOUT.path(run_dir)
    if heldout_file.is_file():  # the split's order, when the run folder has it
        listed = []
        for line in heldout_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                listed.append(json.loads(line)["prompt_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        order = [pid for pid in listed if pid in conversations] + [pid for pid in order if pid not in set(listed)]
    return {
        "columns": columns,
        "prompts": [{"pid": pid, "conv": conversations[pid], "cells": [cells.get((c, pid)) for c in range(len(columns))]} for pid in order],
    }


def _suite_kinds(eval_dir: Path) -> dict[str, str]:
    """suite name → kind (harmful | benign), from the eval folder's metrics.json (absent or unreadable: {})."""
    try:
        suites = json.loads(EVAL_METRICS.path(eval_dir).read_text(encoding="utf-8")).get("suites")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(suites, dict):
        return {}
    return {name: str(entry.get("kind")) for name, entry in suites.items() if isinstance(entry, dict) and entry.get("kind")}


def _suite_prompts(folder: Path) -> dict[str, list[list[str]]]:
    """prompt_id → conversation, from a suite folder's prompts.jsonl (a suite of held-out prompts has none)."""
    conversations: dict[str, list[list[str]]] = {}
    path = EVAL_PROMPTS.path(folder)
    if not path.is_file():
        return conversations
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            conversations[str(record["prompt_id"])] = [[str(m["role"]), str(m["content"])] for m in record["messages"]]
        except (ValueError, KeyError, TypeError):
            continue
    return conversations


def _suite_answers(path: Path) -> tuple[Any, list[str], str | None]:
    """(table, metric columns, None) of a suite's metrics.parquet, or (None, [], why) when it cannot be shown: cut
    short, or without the answer columns of the type the evaluate stage writes. Metrics = its numeric columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as error:  # a file being written or cut short
        return None, [], f"cannot be read ({' '.join(str(error).split())[:160]})"
    for column, wanted, kind in (
        ("prompt_id", pa.types.is_string, "string"),
        ("sample_index", pa.types.is_integer, "integer"),
        ("response", pa.types.is_string, "string"),
    ):
        if column not in table.column_names or not wanted(table.schema.field(column).type):
            return None, [], f"has no {kind} column '{column}'"
    answer_columns = ("prompt_id", "sample_index", "response", "finish_reason")
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    metrics = [f.name for f in table.schema if f.name not in answer_columns and any(test(f.type) for test in numeric)]
    return table, metrics, None


def _metric_value(value: Any) -> float | None:
    return float(value) if isinstance(value, bool) else finite(value)  # a yes/no metric stored as bool counts as 1/0


def suite_sections(run_dir: Path, max_chars: int, heldout: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per evaluation suite: its prompts × (base model, each round): sample 0's answer with the values the safety
    metrics gave it (`<eval>/suites/<name>/metrics.parquet`), so a refusal rate can be read back to the answers. A
    file that cannot be shown is named in the section's `notes`, never left out silently."""
    heldout_conversations = {prompt["pid"]: prompt["conv"] for prompt in (heldout or {}).get("prompts", [])}
    by_suite: dict[str, dict[str, Any]] = {}
    for k, folder in round_folders(run_dir):
        eval_dir = EVAL.path(folder)
        kinds = _suite_kinds(eval_dir)
        for metrics_file in sorted(EVAL_SUITES.path(eval_dir).glob("*/metrics.parquet")):
            name = metrics_file.parent.name
            suite = by_suite.setdefault(
                name, {"name": name, "kind": kinds.get(name), "metrics": [], "columns": [], "cells": {}, "conv": {}, "notes": []}
            )
            suite["kind"] = suite["kind"] or kinds.get(name)
            table, metric_names, problem = _suite_answers(metrics_file)
            if problem is not None:
                suite["notes"].append(f"round {k}: {metrics_file.relative_to(run_dir).as_posix()} {problem}; its answers are not shown")
                continue
            suite["metrics"] += [m for m in metric_names if m not in suite["metrics"]]
            column = len(suite["columns"])
            suite["columns"].append({"round": k, "steering": "none", "label": "base model" if k == 0 else f"round {k}"})
            for row in table.to_pylist():
                if row["sample_index"] != 0 or row["prompt_id"] is None:
                    continue
                finish = row.get("finish_reason")
                suite["cells"][(column, row["prompt_id"])] = {
                    **_shown_text(row["response"], max_chars),
                    "finish": finish if isinstance(finish, str) else None,
                    "values": {m: _metric_value(row.get(m)) for m in metric_names},
                }
                suite["conv"].setdefault(row["prompt_id"], None)
            for pid, conversation in _suite_prompts(metrics_file.parent).items():
                if suite["conv"].get(pid) is None and pid in suite["conv"]:
                    suite["conv"][pid] = conversation
    sections = []
    for suite in by_suite.values():
        prompts = []
        for pid in suite["conv"]:
            conversation = suite["conv"][pid] or heldout_conversations.get(pid) or []
            prompts.append(
                {"pid": pid, "conv": conversation, "cells": [suite["cells"].get((c, pid)) for c in range(len(suite["columns"]))]}
            )
        sections.append(
            {
                "name": suite["name"],
                "kind": suite["kind"],
                "metrics": suite["metrics"],
                "columns": suite["columns"],
                "prompts": prompts,
                "notes": suite["notes"],
            }
        )
    return sections
