"""Export stage: ranked lists / pairs / scored rows → datasets any trainer reads (columns per FORMATS.md).

Formats:
- `trl`           prompt (messages up to the last user turn), chosen / rejected (one assistant message each)
- `trl-implicit`  chosen / rejected as whole conversations (RewardTrainer)
- `kto`           prompt, completion (one assistant message), label (bool): by steering (pos → True, neg →
                  False; unsteered rows left out) or by score (`score >= kto_threshold`)
- `ranked`        prompt, prompt_id, responses, scores, steering: the NEAT trainer's input (RRHF-compatible)
- `h4`            prompt (text of the last user turn), prompt_id, chosen, rejected (full conversations),
                  messages (= chosen), score_chosen, score_rejected (HuggingFaceH4/ultrafeedback_binarized)
Each is written as `<out>/<split>.parquet` and as a `datasets` folder `<out>/hf/` (save_to_disk), both with
explicit Features, so `load_dataset("parquet", …)` and `load_from_disk` read them back unchanged.
Run: `neat-data export runs/demo --format trl` (default out: `<run>/export/<format>`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neat_data.errors import NeatError
from neat_data.runfolder import RunLock, ShardedTable, atomic_write_table, update_manifest
from neat_data.schemas import SCORED
from neat_data.stages.rank import read_ranked

FORMATS = ("trl", "trl-implicit", "kto", "ranked", "h4")


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder (ranked/ for pair and list formats, scored/ for kto).")
    format: Literal["trl", "trl-implicit", "kto", "ranked", "h4"] = "trl"
    out: Path | None = Field(None, description="Output folder (default <run>/export/<format>).")
    split: str = Field("train", pattern=r"^[A-Za-z0-9_.-]+$", description="Split name (e.g. train, train_prefs).")
    kto_label: Literal["steering", "score"] = Field("steering", description="kto: label by steering or by score threshold.")
    kto_threshold: float | None = Field(None, description="kto with kto_label=score: score >= threshold → True.")

    @model_validator(mode="after")
    def _check(self) -> "ExportConfig":
        if self.format == "kto" and self.kto_label == "score" and self.kto_threshold is None:
            raise ValueError("kto_label=score needs kto_threshold")
        return self

    def out_dir(self) -> Path:
        return self.out or Path(self.run) / "export" / self.format


def features(fmt: str) -> Any:
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    messages = List(message)
    return Features({
        "trl": {"prompt": messages, "chosen": messages, "rejected": messages},
        "trl-implicit": {"chosen": messages, "rejected": messages},
        "kto": {"prompt": messages, "completion": messages, "label": Value("bool")},
        "ranked": {"prompt": messages, "prompt_id": Value("string"), "responses": List(Value("string")),
                   "scores": List(Value("float64")), "steering": List(Value("string"))},
        "h4": {"prompt": Value("string"), "prompt_id": Value("string"), "chosen": messages, "rejected": messages,
               "messages": messages, "score_chosen": Value("float64"), "score_rejected": Value("float64")},
    }[fmt])


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def export_rows(config: ExportConfig) -> list[dict[str, Any]]:
    """The rows of the chosen format (pure given the run folder's tables)."""
    fmt = config.format
    if fmt == "kto":
        scored = ShardedTable(Path(config.run) / "scored", SCORED).read().to_pylist()
        rows = []
        for r in scored:
            if r["score_status"] != "ok" and not (config.kto_label == "steering" and r["status"] == "ok"):
                continue
            if config.kto_label == "steering":
                if r["steering"] == "none":
                    continue
                label = r["steering"] == "pos"
            else:
                label = r["score"] >= config.kto_threshold
            rows.append({"prompt": r["prompt"], "completion": assistant(r["response"]), "label": label})
        return rows
    if fmt == "ranked":
        return [{"prompt": r["prompt"], "prompt_id": r["prompt_id"], "responses": r["responses"], "scores": r["scores"],
                 "steering": r["steering"]} for r in read_ranked(config.run, "lists").to_pylist()]
    pairs = read_ranked(config.run, "pairs").to_pylist()
    if fmt == "trl":
        return [{"prompt": p["prompt"], "chosen": assistant(p["chosen"]), "rejected": assistant(p["rejected"])} for p in pairs]
    if fmt == "trl-implicit":
        return [{"chosen": p["prompt"] + assistant(p["chosen"]), "rejected": p["prompt"] + assistant(p["rejected"])} for p in pairs]
    return [{"prompt": p["prompt"][-1]["content"], "prompt_id": p["prompt_id"], "chosen": p["prompt"] + assistant(p["chosen"]),
             "rejected": p["prompt"] + assistant(p["rejected"]), "messages": p["prompt"] + assistant(p["chosen"]),
             "score_chosen": p["score_chosen"], "score_rejected": p["score_rejected"]} for p in pairs]


def run_export(config: ExportConfig, argv: list[str] | None = None) -> tuple[Path, int]:
    """Write the export; returns (output folder, rows)."""
    from datasets import Dataset, DatasetDict

    run_dir = Path(config.run)
    if not run_dir.is_dir():
        raise NeatError("run folder does not exist", file=run_dir)
    out = config.out_dir()
    with RunLock(run_dir):
        rows = export_rows(config)
        dataset = Dataset.from_list(rows, features=features(config.format))
        atomic_write_table(out / f"{config.split}.parquet", dataset.data.table.cast(dataset.features.arrow_schema))
        # save_to_disk writes several files: build the folder aside, then swap it in whole
        staging = Path(tempfile.mkdtemp(prefix=".hf-", dir=out))
        try:
            DatasetDict({config.split: dataset}).save_to_disk(str(staging / "hf"))
            if (out / "hf").exists():
                shutil.rmtree(out / "hf")
            (staging / "hf").rename(out / "hf")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        update_manifest(run_dir, f"export:{config.format}", {"config": config.model_dump(mode="json"), "command": argv,
                                                             "rows": len(rows), "out": str(out), "finished": True})
    return out, len(rows)


