"""Online NEAT rounds from a recipe: generate → score → rank → export → train → evaluate, round after round.

In:  a recipe YAML (`pipelines/*.yaml`, schema `Recipe`; `--set key=value` overrides, dotted for nesting).
Out: runs/<name>/
       manifest.json                 the resolved recipe, each stage's config path, seconds, finished flags
       prompts/heldout.jsonl, prompts/round_NN.jsonl   the deterministic split (held-out never trained on)
       round_00/eval/                the base model on the held-out prompts (+ the preferred set for perplexity)
       round_NN/{generations,scored,ranked,export,model,eval}, round_NN/configs/<stage>.json
       rounds.json, rounds.md, rounds.png   the per-round table and curve
Run: `neat-data run pipelines/quickstart.yaml [--set rounds=3]`.

Round k generates with round k−1's policy (the base model for k = 1) on a fresh prompt slice. Scores use a
fixed reference (the base model unless the recipe names another), so rounds are comparable. Each stage runs
in its own process (`neat-data stage NAME CONFIG.json`), so vLLM and the trainer never hold memory at the
same time; a killed run resumes at the first unfinished stage (the stage itself resumes where it can).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from neat_data.errors import NeatError
from neat_data.runfolder import RunLock, atomic_write_bytes, atomic_write_json, read_manifest


class PromptsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Prompts: .jsonl/.parquet/.csv or hf://… (relative paths: from the recipe's folder).")
    prompt_column: str | None = None
    limit: int | None = Field(None, ge=1, description="Read only the first N unique prompts of the source.")
    heldout: int = Field(16, ge=1, description="Held-out prompts for evaluation (never trained on).")
    per_round: int = Field(32, ge=1, description="Fresh training prompts per round.")


class GenerateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["vllm", "openai", "transformers"] = "vllm"
    num_pos: int = Field(2, ge=0)
    num_neg: int = Field(2, ge=0, description="0 = the positive-only baseline.")
    num_neutral: int = Field(0, ge=0)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    options: dict[str, Any] = Field(default_factory=dict, description="Any other GenerateConfig field (dtype, max_model_len, base_url, …).")


class ScoreSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scorer: str = "self-contrast"
    model: str | None = Field(None, description="Reward model / self-contrast reference (default: the base model, fixed across rounds).")
    negative_score: Literal["scored", "floor"] = "scored"
    options: dict[str, Any] = Field(default_factory=dict, description="Any other ScoreConfig field (batch_size, device, judge_*…).")


class RankSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: Literal["best-vs-worst", "pos-vs-neg", "all-pairs"] = "best-vs-worst"
    pos_vs_neg_by: Literal["construction", "score"] = "construction"
    min_margin: float = Field(0.0, ge=0)


class EvaluateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["vllm", "openai", "transformers"] = Field("transformers", description="transformers: no engine start for a small held-out set.")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(128, ge=1)
    samples: int = Field(1, ge=1, le=256, description="Responses per held-out / suite prompt (k); intervals resample prompts.")
    suites: list[str] = Field(default_factory=list, description="Evaluation suites (prompts/eval/ names or YAML paths), e.g. [harmbench, benign].")
    suite_limit: int | None = Field(None, ge=1, description="At most N prompts per suite (a seeded subset): keeps a CPU run small.")
    options: dict[str, Any] = Field(default_factory=dict, description="Other GenerateConfig fields for the held-out generation.")

    @model_validator(mode="after")
    def _suites_exist(self) -> "EvaluateSpec":
        from neat_data.safety.suites import check_suites

        try:
            check_suites(self.suites)  # a bad suite file or a missing data package stops the recipe, not round 0's evaluate
        except NeatError as error:
            raise ValueError(f"suites: {error.one_line()}") from None
        return self


class Recipe(BaseModel):
    """A NEAT run. Every open choice of the method is a field here, with its default recorded in the manifest."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    out: Path | None = Field(None, description="Run folder (default runs/<name>).")
    model: str = Field(description="Base policy: bundled alias, local folder or Hub id.")
    prompts: PromptsSpec
    pairs: list[str] = Field(default_factory=lambda: ["harmless"], min_length=1)
    rounds: int = Field(2, ge=1, le=100)
    seed: int = Field(0, ge=0)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    rank: RankSpec = Field(default_factory=RankSpec)
    exports: list[Literal["ranked", "trl", "trl-implicit", "kto", "h4"]] = Field(
        default_factory=lambda: ["ranked"], description="ranked feeds the trainer; trl (with rank.pairs pos-vs-neg) = the DPO-style baseline export.")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields (loss, lr, epochs, top_layers, lora_rank, …).")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if "ranked" not in self.exports:
            raise ValueError("exports must include 'ranked' (the trainer's input)")
        return self

    def run_dir(self) -> Path:
        return self.out or Path("runs") / self.name


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise NeatError(f"--set wants key=value, got {text!r}", field="--set")
    key, value = text.split("=", 1)
    parsed = yaml.safe_load(value) if value.strip() else None
    if isinstance(parsed, str):
        try:
            parsed = float(parsed)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    return key.strip().split("."), parsed


def load_recipe(path: Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe, apply `--set` overrides, validate; errors name the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NeatError("recipe not found", file=path) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise NeatError(f"YAML syntax error: {getattr(error, 'problem', error)}", file=path, row=mark.line + 1 if mark else None) from None
    if not isinstance(raw, dict):
        raise NeatError("a recipe is a mapping of keys", file=path)
    for text in overrides:
        keys, value = parse_override(text)
        target = raw
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    source = raw.get("prompts", {}).get("source") if isinstance(raw.get("prompts"), dict) else None
    if source and "://" not in source and not Path(source).is_absolute() and not Path(source).exists():
        raw["prompts"]["source"] = str((path.parent / source).resolve())  # relative to the recipe, when not to the cwd
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        raise NeatError(first["msg"], file=path, field=".".join(str(p) for p in first["loc"])) from None
    check_stage_fields(recipe, path)
    return recipe


def check_stage_fields(recipe: Recipe, path: Path) -> None:
    """Validate the free-form parts (train, *.options) against the stage configs now, not rounds later."""
    from neat_data.stages.generate import GenerateConfig
    from neat_data.stages.score import ScoreConfig
    from neat_data.train.trainer import TrainConfig

    checks = [("train", TrainConfig, {"data": ".", "model": recipe.model, "out": ".", **recipe.train}),
              ("generate.options", GenerateConfig, {"prompts": ".", "model": recipe.model, "out": ".", "backend": recipe.generate.backend,
                                                    "base_url": "http://x", **recipe.generate.options}),
              ("evaluate.options", GenerateConfig, {"prompts": ".", "model": recipe.model, "out": ".", "backend": recipe.evaluate.backend,
                                                    "base_url": "http://x", **recipe.evaluate.options}),
              ("score.options", ScoreConfig, {"run": ".", **recipe.score.options})]
    for prefix, config_class, values in checks:
        try:
            config_class.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            raise NeatError(first["msg"], file=path, field=".".join([prefix, *(str(p) for p in first["loc"])])) from None


def split_prompts(recipe: Recipe, run_dir: Path) -> None:
    """Write prompts/heldout.jsonl and one file per round: a seeded hash order of the prompt ids, so the
    split never changes when the source is re-read and held-out prompts are never trained on."""
    from neat_data.prompts_in import load_prompts

    folder = run_dir / "prompts"
    wanted = [folder / "heldout.jsonl"] + [folder / f"round_{k:02d}.jsonl" for k in range(1, recipe.rounds + 1)]
    if all(path.exists() for path in wanted):
        return
    loaded = load_prompts(recipe.prompts.source, prompt_column=recipe.prompts.prompt_column, limit=recipe.prompts.limit)
    records = sorted(loaded.records, key=lambda r: hashlib.sha256(f"{recipe.seed}:{r.prompt_id}".encode()).hexdigest())
    needed = recipe.prompts.heldout + recipe.rounds * recipe.prompts.per_round
    if len(records) < needed:
        raise NeatError(f"{recipe.rounds} rounds × {recipe.prompts.per_round} + {recipe.prompts.heldout} held-out needs {needed} "
                        f"prompts; the source has {len(records)}", file=recipe.prompts.source, field="prompts")
    slices = [records[: recipe.prompts.heldout]]
    for k in range(recipe.rounds):
        start = recipe.prompts.heldout + k * recipe.prompts.per_round
        slices.append(records[start:start + recipe.prompts.per_round])
    for path, chunk in zip(wanted, slices):
        if not path.exists():
            lines = "".join(json.dumps({"prompt_id": r.prompt_id, "messages": r.messages}, ensure_ascii=False) + "\n" for r in chunk)
            atomic_write_bytes(path, lines.encode("utf-8"))


def stage_configs(recipe: Recipe, run_dir: Path, k: int) -> list[tuple[str, dict[str, Any]]]:
    """The (stage, config) list of round k (k = 0: only the base model's evaluation)."""
    base, folder = recipe.model, run_dir / f"round_{k:02d}"
    policy_in = base if k <= 1 else str(run_dir / f"round_{k - 1:02d}" / "model")
    policy_out = base if k == 0 else str(folder / "model")
    score = {"scorer": recipe.score.scorer, "model": recipe.score.model or base, "negative_score": recipe.score.negative_score, **recipe.score.options}
    sampling = {"seed": recipe.seed}
    stages: list[tuple[str, dict[str, Any]]] = []
    if k > 0:
        g = recipe.generate
        stages += [
            ("generate", {"prompts": str(run_dir / "prompts" / f"round_{k:02d}.jsonl"), "pairs": recipe.pairs, "model": policy_in,
                          "backend": g.backend, "out": str(folder), "round": k, "num_pos": g.num_pos, "num_neg": g.num_neg,
                          "num_neutral": g.num_neutral, "sampling": {**sampling, "temperature": g.temperature, "top_p": g.top_p,
                                                                     "max_tokens": g.max_tokens}, **g.options}),
            ("score", {"run": str(folder), **score}),
            ("rank", {"run": str(folder), **recipe.rank.model_dump()}),
            *[(f"export-{fmt}", {"run": str(folder), "format": fmt}) for fmt in recipe.exports],
            ("train", {"data": str(folder), "model": policy_in, "out": str(folder / "model"), "seed": recipe.seed, **recipe.train}),
        ]
    e, eval_dir = recipe.evaluate, str(folder / "eval")
    base_eval = run_dir / "round_00" / "eval"
    stages.append(("evaluate", {
        "generate": {"prompts": str(run_dir / "prompts" / "heldout.jsonl"), "pairs": recipe.pairs, "model": policy_out,
                     "backend": e.backend, "out": eval_dir, "round": k, "num_pos": 1 if k == 0 else 0, "num_neg": 0, "num_neutral": e.samples,
                     "sampling": {**sampling, "temperature": e.temperature, "top_p": e.top_p, "max_tokens": e.max_tokens}, **e.options},
        "score": {"run": eval_dir, **score},
        "samples": e.samples, "suites": e.suites, "suite_limit": e.suite_limit,
        "base_eval": None if k == 0 else str(base_eval),
        "preferred": str(base_eval),
    }))
    return stages


def recipe_identity(recipe: Recipe) -> dict[str, Any]:
    """What a run folder is bound to: the whole recipe except the number of rounds (a run can be extended)."""
    return {k: v for k, v in recipe.model_dump(mode="json").items() if k != "rounds"}


def run_stage(name: str, config: dict[str, Any], folder: Path, run_dir: Path, k: int, echo: Any) -> float:
    """Run one stage in its own process unless the manifest says it finished; returns its seconds."""
    manifest = read_manifest(run_dir)
    done = manifest.get("rounds", {}).get(str(k), {}).get(name, {})
    if done.get("finished"):
        echo(f"round {k} · {name}: done ({done['seconds']:.0f} s), skipped")
        return 0.0
    config_path = folder / "configs" / f"{name}.json"
    log_path, summary_path = folder / "logs" / f"{name}.log", folder / "logs" / f"{name}.summary"
    atomic_write_json(config_path, config)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)
    echo(f"round {k} · {name} … (log: {log_path})")
    started = time.time()
    # The stage's own output (engine logs, progress bars) goes to its log; the terminal gets its summary.
    with open(log_path, "ab") as log:
        finished = subprocess.run([sys.executable, "-m", "neat_data.cli", "stage", name.split("-")[0], str(config_path),
                                   "--summary", str(summary_path)], stdout=log, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        echo("\n".join(f"    {line}" for line in tail))
        raise NeatError(f"stage {name} of round {k} failed (exit code {finished.returncode}; log above and in {log_path}); "
                        "fix and re-run: finished stages are kept", file=config_path)
    seconds = time.time() - started
    if summary_path.exists():
        for line in summary_path.read_text(encoding="utf-8").splitlines():
            echo(f"    {line}")
    manifest = read_manifest(run_dir)
    manifest.setdefault("rounds", {}).setdefault(str(k), {})[name] = {"finished": True, "seconds": round(seconds, 2), "config": str(config_path)}
    atomic_write_json(run_dir / "manifest.json", manifest)
    return seconds


def run_rounds(recipe: Recipe, *, overwrite: bool = False, echo: Any = print) -> list[dict[str, Any]]:
    """Execute every unfinished stage of every round; returns the per-round table rows."""
    import shutil

    from neat_data.round_report import round_rows, write_round_report

    run_dir = recipe.run_dir()
    with RunLock(run_dir):
        manifest = read_manifest(run_dir)
        if overwrite and manifest:
            for child in run_dir.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            manifest = {}
        if manifest and "recipe" not in manifest:
            raise NeatError("this folder holds a single-stage run, not a `neat-data run`; use another name/out or --overwrite",
                            file=run_dir / "manifest.json")
        if manifest.get("recipe") and manifest["recipe"] != recipe_identity(recipe):
            changed = sorted(k for k, v in recipe_identity(recipe).items() if manifest["recipe"].get(k) != v)
            raise NeatError(f"run folder was made with another recipe (changed: {', '.join(changed)}); use --overwrite or another name",
                            file=run_dir / "manifest.json", field=changed[0] if changed else None)
        manifest.update(recipe=recipe_identity(recipe), rounds_planned=recipe.rounds, command=" ".join(sys.argv))
        atomic_write_json(run_dir / "manifest.json", manifest)
        split_prompts(recipe, run_dir)
        for k in range(0, recipe.rounds + 1):
            folder = run_dir / f"round_{k:02d}"
            for name, config in stage_configs(recipe, run_dir, k):
                run_stage(name, config, folder, run_dir, k, echo)
        rows = round_rows(run_dir, recipe.rounds)
        write_round_report(run_dir, rows)
    return rows
