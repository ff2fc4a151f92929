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
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from neat_data.engines import BackendName
from neat_data.engines.base import Sampling
from neat_data.errors import NeatError, validation_message
from neat_data.rounds_push import PushSpec, push_round
from neat_data.runfolder import RunLock, atomic_write_bytes, atomic_write_json, read_manifest
from neat_data.stages.export import ExportFormat
from neat_data.stages.score import NegativeScore
from neat_data.variants import StageCache, dependencies, materialize, stage_key, variant_overrides


class PromptsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Prompts: .jsonl/.parquet/.csv or hf://… (relative paths: from the recipe's folder).")
    prompt_column: str | None = None
    limit: int | None = Field(None, ge=1, description="Read only the first N unique prompts of the source.")
    heldout: int = Field(16, ge=1, description="Held-out prompts for evaluation (never trained on).")
    per_round: int = Field(32, ge=1, description="Fresh training prompts per round.")


def refuse_shadowed_options(options: dict[str, Any], named: set[str]) -> None:
    """`options:` passes other stage fields; a key that a named field of the section (or the round runner) sets
    would silently win or lose against it, so it is refused."""
    shadowed = sorted(set(options) & named)
    if shadowed:
        raise ValueError(f"options.{shadowed[0]} duplicates a field this section (or the round runner) sets; set it there")


class GenerateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: BackendName = "vllm"
    num_pos: int = Field(2, ge=0)
    num_neg: int = Field(2, ge=0, description="0 = the positive-only baseline.")
    num_neutral: int = Field(0, ge=0)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    options: dict[str, Any] = Field(default_factory=dict, description="Any other GenerateConfig field (dtype, max_model_len, base_url, …).")

    @model_validator(mode="after")
    def _options(self) -> "GenerateSpec":
        refuse_shadowed_options(self.options, set(type(self).model_fields) | set(Sampling.model_fields) | RUNNER_SETS["generate"])
        return self


class ScoreSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scorer: str = "self-contrast"
    model: str | None = Field(None, description="Reward model / self-contrast reference (default: the base model, fixed across rounds).")
    negative_score: NegativeScore = "scored"
    options: dict[str, Any] = Field(default_factory=dict, description="Any other ScoreConfig field (batch_size, device, judge_*…).")

    @model_validator(mode="after")
    def _options(self) -> "ScoreSpec":
        refuse_shadowed_options(self.options, set(type(self).model_fields) | RUNNER_SETS["score"])
        return self


# Fields the round runner sets itself in each stage's config (a recipe names them once, at the top, or not at all).
RUNNER_SETS = {"generate": {"prompts", "pairs", "model", "out", "round", "sampling", "seed"}, "score": {"run"}}


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
    rank: dict[str, Any] = Field(default_factory=dict, description="RankConfig fields (pairs, pos_vs_neg_by, min_margin, …).")
    exports: list[ExportFormat] = Field(
        default_factory=lambda: ["ranked"], description="ranked feeds the trainer; trl (with rank.pairs pos-vs-neg) = the DPO-style baseline export.")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields (loss, lr, epochs, top_layers, lora_rank, …).")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    push: PushSpec | None = Field(None, description="Publish each finished round to a Hub dataset repo (neat_data.rounds_push).")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name → overrides (dotted keys, as --set): each variant runs in runs/<name>/<variant>/, "
                                          "sharing every stage whose inputs are identical; comparison.{json,md,png} side by side.")
    reference: str | None = Field(None, description="The variant the others are compared with (paired differences); default: the first.")

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if "ranked" not in self.exports:
            raise ValueError("exports must include 'ranked' (the trainer's input)")
        for name in self.variants:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"variant name {name!r}: letters, digits, '_', '.', '-' only (it is a folder name)")
        variant_overrides(self.variants)  # refuses a variant that changes what all variants share
        if self.reference is not None and self.reference not in self.variants:
            raise ValueError(f"reference {self.reference!r} is not one of the variants")
        return self

    def run_dir(self) -> Path:
        return self.out or Path("runs") / self.name


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], the value read as YAML); a NeatError naming the override when it is malformed."""
    if "=" not in text:
        raise NeatError(f"--set wants key=value, got {text!r}", option="set")
    key, value = text.split("=", 1)
    keys = [part.strip() for part in key.split(".")]
    if not all(keys) or not all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in keys):
        raise NeatError(f"--set key {key!r} must be dotted names, e.g. train.lr", option="set")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise NeatError(f"--set {key}: the value is not valid YAML ({getattr(error, 'problem', None) or 'syntax error'})", option="set") from None
    if isinstance(parsed, str):
        try:
            parsed = float(parsed)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    return keys, parsed


def apply_override(raw: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    target = raw
    for depth, key in enumerate(keys[:-1]):
        child = target.setdefault(key, {})
        if child is None:
            child = target[key] = {}
        if not isinstance(child, dict):
            raise NeatError(f"--set {text!r}: '{'.'.join(keys[:depth + 1])}' is a {type(child).__name__}, not a section", option="set")
        target = child
    target[keys[-1]] = value


def read_recipe_file(path: Path) -> dict[str, Any]:
    """The recipe's YAML mapping; every way a file can be wrong is one line naming it."""
    if path.is_dir():
        raise NeatError("is a folder, not a recipe file", file=path)
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise NeatError("recipe not found", file=path) from None
    except UnicodeDecodeError as error:
        raise NeatError(f"not valid UTF-8 ({error.reason} at byte {error.start})", file=path) from None
    except OSError as error:
        raise NeatError(f"cannot read the recipe ({error.strerror})", file=path) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise NeatError(f"YAML syntax error: {getattr(error, 'problem', error)}", file=path, row=mark.line + 1 if mark else None) from None
    if not isinstance(raw, dict):
        raise NeatError("a recipe is a mapping of keys", file=path)
    return raw


def _relative_to(base: Path, value: Any) -> Any:
    """A relative file path is relative to the folder of the file that names it (a recipe's own values: the recipe's
    folder; a `--set` value: the current folder). hf:// sources and other URLs pass through."""
    if not isinstance(value, str) or "://" in value or ":" in value.split("/")[0] or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def load_recipe(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe, apply `--set` overrides, validate the recipe *and* every stage config it makes (so a value a
    stage rejects is refused now, not rounds later); errors name the file and the field."""
    path = Path(path)
    raw = read_recipe_file(path)
    if isinstance(raw.get("prompts"), dict) and raw["prompts"].get("source"):
        raw["prompts"]["source"] = _relative_to(path.parent, raw["prompts"]["source"])
    if isinstance(raw.get("pairs"), list):  # pair libraries given as YAML paths, like the prompts source
        raw["pairs"] = [_relative_to(path.parent, p) if str(p).endswith((".yaml", ".yml")) else p for p in raw["pairs"]]
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["prompts", "source"]:
            value = _relative_to(Path.cwd(), value)
        apply_override(raw, keys, value, text)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        field, message = validation_message(error)
        raise NeatError(message, file=path, field=field) from None
    check_stage_fields(recipe, path)
    for name in recipe.variants:
        check_stage_fields(variant_recipe(recipe, name, path), path, prefix=f"variants.{name}.")
    return recipe


def variant_recipe(recipe: Recipe, name: str, path: Path | None = None) -> Recipe:
    """The recipe of one variant: the base recipe with the variant's overrides, run in <run>/<variant>/."""
    # a variant is compared, not published: the parent run's push: would send every variant to the same configs
    raw = {key: value for key, value in recipe.model_dump(mode="json").items() if key not in ("variants", "reference", "push")}
    for text in variant_overrides({name: recipe.variants[name]})[name]:
        keys, value = parse_override(text)
        apply_override(raw, keys, value, text)
    raw.update(name=f"{recipe.name}.{name}", out=str(recipe.run_dir() / name))
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        field, message = validation_message(error)
        raise NeatError(message, file=path, field=f"variants.{name}.{field}") from None


def stage_config_classes() -> dict[str, Any]:
    """Stage name → the config class that validates it (imported here: the recipe layer sits above the stages)."""
    from neat_data.stages.evaluate import EvaluateConfig
    from neat_data.stages.export import ExportConfig
    from neat_data.stages.generate import GenerateConfig
    from neat_data.stages.rank import RankConfig
    from neat_data.stages.score import ScoreConfig
    from neat_data.train.trainer import TrainConfig

    return {"generate": GenerateConfig, "score": ScoreConfig, "rank": RankConfig, "export": ExportConfig, "train": TrainConfig,
            "evaluate": EvaluateConfig}


def check_stage_fields(recipe: Recipe, path: Path, prefix: str = "") -> None:
    """Build the configs of round 1 (and round 0's evaluation) exactly as `run` will, and validate each with its stage's
    own config class: the recipe can never accept a value its stage rejects."""
    classes = stage_config_classes()
    for k in (0, 1):
        for name, values in stage_configs(recipe, Path("runs") / recipe.name, k):
            stage = name.split("-")[0]
            try:
                classes[stage].model_validate(values)
            except ValidationError as error:
                field, message = validation_message(error)
                section = {"export": "exports"}.get(stage, stage)
                inner = field.removeprefix("sampling.") if stage == "generate" else field
                raise NeatError(message, file=path, field=f"{prefix}{section}.{inner}") from None


def split_files(recipe: Recipe, run_dir: Path) -> list[Path]:
    folder = run_dir / "prompts"
    return [folder / "heldout.jsonl"] + [folder / f"round_{k:02d}.jsonl" for k in range(1, recipe.rounds + 1)]


def plan_split(recipe: Recipe) -> list[list[Any]]:
    """[held-out prompts, round 1's, round 2's, …]: a seeded hash order of the prompt ids, so the split never changes
    when the source is re-read and held-out prompts are never trained on. Pure: validates, writes nothing."""
    from neat_data.prompts_in import load_prompts

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
    return slices


def write_split(recipe: Recipe, run_dir: Path, slices: list[list[Any]]) -> None:
    """prompts/heldout.jsonl and one file per round (files already there are kept: a run extended by rounds)."""
    for path, chunk in zip(split_files(recipe, run_dir), slices):
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
            ("rank", {"run": str(folder), **recipe.rank}),
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


def check_models(recipe: Recipe) -> None:
    """The policy and a named scorer model must exist before the run folder records the recipe."""
    from neat_data.models import resolve_model

    resolve_model(recipe.model)
    judge_on_server = recipe.score.scorer == "judge" and recipe.score.options.get("judge_backend", "openai") == "openai"
    if recipe.score.model and not recipe.score.scorer.startswith("python:") and not judge_on_server:
        resolve_model(recipe.score.model)


def recipe_identity(recipe: Recipe) -> dict[str, Any]:
    """What a run folder is bound to: the whole recipe except the number of rounds (a run can be extended) and
    where it is published (push: does not change the data; added to a finished run, it pushes its rounds)."""
    return {k: v for k, v in recipe.model_dump(mode="json").items() if k not in ("rounds", "push")}


def record_stage(run_dir: Path, k: int, name: str, record: dict[str, Any]) -> None:
    manifest = read_manifest(run_dir)
    manifest.setdefault("rounds", {}).setdefault(str(k), {})[name] = {"finished": True, **record}
    atomic_write_json(run_dir / "manifest.json", manifest)


def run_stage(name: str, config: dict[str, Any], folder: Path, run_dir: Path, k: int, echo: Any, *,
              cache: StageCache | None = None, key: str | None = None) -> float:
    """Run one stage in its own process unless the manifest says it finished — or, with a `cache` of a variants run,
    another variant finished the stage with the same `key` (then its result is linked in); returns its seconds."""
    manifest = read_manifest(run_dir)
    done = manifest.get("rounds", {}).get(str(k), {}).get(name, {})
    if done.get("finished"):
        echo(f"round {k} · {name}: done ({done['seconds']:.0f} s), skipped")
        return 0.0
    config_path = folder / "configs" / f"{name}.json"
    shared = cache.find(key, run_dir) if cache is not None and key is not None else None
    if shared is not None:
        materialize(name, shared, folder)
        atomic_write_json(config_path, config)
        source = f"{shared['run']}/round_{shared['round']:02d}"
        echo(f"round {k} · {name}: the same as in {source} (identical inputs), shared")
        record_stage(run_dir, k, name, {"seconds": 0.0, "config": str(config_path), "shared_from": source, "key": key})
        return 0.0
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
    record_stage(run_dir, k, name, {"seconds": round(seconds, 2), "config": str(config_path), "key": key})
    if cache is not None and key is not None:
        cache.record(key, run_dir, k, name)
    return seconds


def run_rounds(recipe: Recipe, *, overwrite: bool = False, echo: Any = print, cache: StageCache | None = None) -> list[dict[str, Any]]:
    """Execute every unfinished stage of every round; returns the per-round table rows."""
    import shutil

    from neat_data.round_report import round_rows, write_round_report

    run_dir = recipe.run_dir()
    # Everything that can be wrong with the recipe is found before the run folder is touched (or, with --overwrite,
    # emptied): the prompts and the split sizes, the models.
    slices = None if all(path.exists() for path in split_files(recipe, run_dir)) and not overwrite else plan_split(recipe)
    check_models(recipe)
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
        if slices is not None:
            write_split(recipe, run_dir, slices)
        manifest.update(recipe=recipe_identity(recipe), rounds_planned=recipe.rounds, command=" ".join(sys.argv))
        atomic_write_json(run_dir / "manifest.json", manifest)
        keys: dict[tuple[str, int], str] = {}  # each stage's key: its config and the keys of the stages it reads
        for k in range(0, recipe.rounds + 1):
            folder = run_dir / f"round_{k:02d}"
            for name, config in stage_configs(recipe, run_dir, k):
                inputs = [keys[dep] for dep in dependencies(name, k, recipe.exports) if dep in keys]
                keys[(name, k)] = stage_key(name, config, run_dir, inputs)
                run_stage(name, config, folder, run_dir, k, echo, cache=cache, key=keys[(name, k)])
            push_round(recipe.push, run_dir, k, rounds=recipe.rounds, exports=list(recipe.exports), echo=echo)
        rows = round_rows(run_dir, recipe.rounds)
        write_round_report(run_dir, rows)
    return rows


def run_variants(recipe: Recipe, *, overwrite: bool = False, echo: Any = print) -> dict[str, list[dict[str, Any]]]:
    """Every variant of the recipe in turn (each resumable), sharing identical stages; then the comparison."""
    import shutil

    from neat_data.comparison import write_comparison

    parent = recipe.run_dir()
    recipes = {name: variant_recipe(recipe, name) for name in recipe.variants}
    for variant in recipes.values():  # everything checked before anything is written
        if not all(path.exists() for path in split_files(variant, variant.run_dir())) or overwrite:
            plan_split(variant)
        check_models(variant)
    with RunLock(parent, check_shards=False):
        manifest = read_manifest(parent)
        if overwrite and manifest:
            for child in parent.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            manifest = {}
        if manifest and manifest.get("variants_recipe") != recipe_identity(recipe):
            raise NeatError("run folder was made with another recipe; use --overwrite or another name", file=parent / "manifest.json")
        atomic_write_json(parent / "manifest.json", {**manifest, "variants_recipe": recipe_identity(recipe), "variants": list(recipes)})
    cache = StageCache(parent)
    results = {}
    for name, variant in recipes.items():
        echo(f"== variant {name}")
        results[name] = run_rounds(variant, echo=echo, cache=cache)
    write_comparison(parent, recipe, results)
    return results
