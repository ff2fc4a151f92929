"""Recipes: the schema of a `neat-data run`, how a recipe file (plus `--set` overrides) is read and checked, and the
stage configs each round of it makes.

In:  a recipe YAML (`pipelines/*.yaml`, schema `Recipe`; `--set key=value` overrides, dotted for nesting).
Out: a validated `Recipe`; `plan_round(recipe, run_dir, k)` → the stages of round k (typed configs, what each reads); `plan_split`
     → the held-out and per-round prompts. Nothing here runs a stage or writes a file (neat_data.rounds.runner does).

Every open choice of the method is a field, with its default recorded in the run's manifest. A recipe is checked by
building round 1's (and round 0's) stage configs and validating each with its stage's own config class, so a recipe
can never accept a value its stage rejects; relative paths are relative to the file that names them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from neat_data.core.errors import NeatError, register_secret_fields, validation_message
from neat_data.core.layout import EVAL, EVAL_RESEEDED, HELDOUT, MODEL, RANKED_EXPORT, round_folder, round_prompts
from neat_data.engines.costs import BudgetOptions
from neat_data.rounds.publish import PushSpec
from neat_data.rounds.recipe_file import apply_override, parse_override, read_recipe_file, relative_to_file
from neat_data.rounds.sections import (
    AuditSpec,
    EvaluateSpec,
    FixedDataSpec,
    GenerateSpec,
    PromptsSpec,
    RankSpec,
    RedoSampling,
    ScoreSpec,
    TrainSpec,
    evaluation_generate,
)
from neat_data.rounds.stages import STAGES, PlannedStage
from neat_data.rounds.variants import variant_overrides
from neat_data.stages.export import ExportFormat
from neat_data.stages.generate.plan import RedoClass


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
    redo: dict[RedoClass, RedoSampling] = Field(
        default_factory=dict,
        description="Each round, after generate: the rows of each class generated again with this sampling, in order "
        "(e.g. {truncated: {max_tokens: 256}}); the rows keep their keys, score rescores exactly those (generate --redo).",
    )
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    rank: RankSpec = Field(default_factory=RankSpec, description="RankConfig fields (pairs, pos_vs_neg_by, min_margin, …).")
    audit: AuditSpec = Field(
        default_factory=AuditSpec,
        description="DataAuditConfig fields: after rank, the data audit; a FAIL of a check in fail_on stops the round "
        "(exit 5) before its exports and training. May change on a run folder: the audit and what follows run again.",
    )
    exports: list[ExportFormat] = Field(
        default_factory=lambda: list[ExportFormat](["ranked"]),
        description="ranked feeds the trainer; trl (with rank.pairs pos-vs-neg) = the DPO-style baseline export.",
    )
    train: TrainSpec | None = Field(
        default_factory=TrainSpec,
        description="TrainConfig fields (loss, lr, epochs, top_layers, lora_rank, …); null: no training and no evaluation — one "
        "round that stops after its exports (a dataset expansion: pipelines/expand.yaml).",
    )
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    push: PushSpec | None = Field(None, description="Publish each finished round to a Hub dataset repo (neat_data.rounds.publish).")
    fixed_data: FixedDataSpec | None = Field(None, description="Train on fixed pairs instead of generated ones (the positive control).")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="name → overrides (dotted keys, as --set): each variant runs in runs/<name>/<variant>/, "
        "sharing every stage whose inputs are identical; comparison.{json,md,png} side by side.",
    )
    reference: str | None = Field(None, description="The variant the others are compared with (paired differences); default: the first.")

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if "ranked" not in self.exports:
            raise ValueError("exports must include 'ranked' (the trainer's input)")
        if self.train is None and (self.rounds != 1 or self.fixed_data is not None):
            raise ValueError("train: null runs one round of data (rounds: 1, no fixed_data): no round trains a policy for the next")
        if self.prompts.heldout == 0 and self.train is not None:
            raise ValueError("prompts.heldout: 0 only with train: null (the evaluation needs held-out prompts)")
        for name in self.variants:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"variant name {name!r}: letters, digits, '_', '.', '-' only (it is a folder name)")
        variant_overrides(self.variants)  # refuses a variant that changes what all variants share
        return self

    @field_validator("reference")
    @classmethod
    def _reference_is_a_variant(cls, reference: str | None, info: ValidationInfo) -> str | None:
        variants = info.data.get("variants")
        if reference is not None and variants is not None and reference not in variants:
            raise ValueError(
                f"{reference!r} is not one of the variants ({', '.join(variants) or 'none'}): "
                "name one of them (--set reference=NAME), or --set reference=null to compare with the first"
            )
        return reference

    def run_dir(self) -> Path:
        return self.out or Path("runs") / self.name


def _pair_library_path(folder: Path, spec: Any) -> Any:
    """A pair library given as a YAML path (optionally `#PAIR_ID`) is relative to the recipe, like the prompts source."""
    library, mark, pair_id = str(spec).partition("#")
    if not library.endswith((".yaml", ".yml")):
        return spec
    return f"{relative_to_file(folder, library)}{mark}{pair_id}"


def load_recipe(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe, apply `--set` overrides, validate the recipe *and* every stage config it makes (so a value a
    stage rejects is refused now, not rounds later); errors name the file and the field."""
    path = Path(path)
    raw = read_recipe_file(path)
    if isinstance(raw.get("prompts"), dict):
        for key in ("source", "heldout_source"):
            value = raw["prompts"].get(key)
            raw["prompts"][key] = (
                [relative_to_file(path.parent, v) for v in value] if isinstance(value, list) else relative_to_file(path.parent, value)
            )
    if isinstance(raw.get("fixed_data"), dict) and raw["fixed_data"].get("source"):
        raw["fixed_data"]["source"] = relative_to_file(path.parent, raw["fixed_data"]["source"])
    if isinstance(raw.get("pairs"), list):  # pair libraries given as YAML paths, like the prompts source
        raw["pairs"] = [_pair_library_path(path.parent, p) for p in raw["pairs"]]
    for text in overrides:
        keys, value = parse_override(text)
        if keys in (["prompts", "source"], ["prompts", "heldout_source"], ["fixed_data", "source"]):
            value = [relative_to_file(Path.cwd(), v) for v in value] if isinstance(value, list) else relative_to_file(Path.cwd(), value)
        apply_override(raw, keys, value, text)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        field, message = validation_message(error)
        raise NeatError(message, file=path, field=field) from None
    register_secret_fields(recipe)  # push.token_env, a section's api_key_env (its extra fields included)
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


def check_stage_fields(recipe: Recipe, path: Path, prefix: str = "") -> None:
    """Plan round 1 (and round 0's evaluation) exactly as `run` will: every config is validated by its stage's own
    config class, so the recipe can never accept a value its stage rejects."""
    for k in (1, 0):  # round 1 first: a bad score key is named as the user wrote it, not as evaluate.score.<key>
        plan_round(recipe, Path("runs") / recipe.name, k, path=path, prefix=prefix)


def plan_round(recipe: Recipe, run_dir: Path, k: int, *, path: Path | None = None, prefix: str = "") -> list[PlannedStage]:
    """The stages of round k (k = 0: only the base model's evaluation), each with its typed config and what it reads.
    A config its stage rejects is one line naming the recipe key (`path`: the recipe file, for that line).

    What a stage reads is derived, never listed: for each folder it reads, the earlier stages (of this round, or of an
    earlier one) that write that folder — all of them, or the last for a stage that rewrites the folder itself (a
    --redo pass builds on the pass before)."""
    planned = _stage_configs(recipe, run_dir, k, path, prefix)  # first: an invalid value is named as round k plans it
    earlier = [(j, stage) for j in range(k) for stage in _stage_configs(recipe, run_dir, j, path, prefix)]
    for stage in planned:
        writes = stage.kind.writes(stage.config)
        for read in stage.kind.reads(stage.config):
            writers = [(other.label, j) for j, other in earlier if read in other.kind.writes(other.config)]
            stage.reads += writers[-1:] if read in writes else writers
        earlier.append((k, stage))
    return planned


def _stage_configs(recipe: Recipe, run_dir: Path, k: int, path: Path | None, prefix: str) -> list[PlannedStage]:
    """Round k's stages with their typed configs, in order (what they read: plan_round)."""
    base, folder = recipe.model, round_folder(run_dir, k)
    policy_in = base if k <= 1 else str(MODEL.path(round_folder(run_dir, k - 1)))
    policy_out = base if k == 0 else str(MODEL.path(folder))
    score = {
        "scorer": recipe.score.scorer,
        "model": recipe.score.model or base,
        "negative_score": recipe.score.negative_score,
        **recipe.score.stage_fields(),
    }
    planned: list[PlannedStage] = []

    def plan(label: str, kind: str, values: dict[str, Any], section: str | None = None) -> None:
        stage = STAGES[kind]
        try:
            config = stage.config_class.model_validate(values)
        except ValidationError as error:
            field, message = validation_message(error)
            # named as the recipe writes it: sections are flat (generate.max_tokens, evaluate.max_model_len)
            inner = field.removeprefix("generate.") if kind == "evaluate" else field
            inner = inner.removeprefix("sampling.") if kind in ("generate", "evaluate") else inner
            raise NeatError(message, file=path, field=f"{prefix}{section or stage.recipe_section}.{inner}") from None
        register_secret_fields(config)
        planned.append(PlannedStage(label, stage, config, values, folder=folder))

    ranked = str(RANKED_EXPORT.path(folder))  # the file train reads, named here so that train never looks for it
    train = {"data": ranked, "model": policy_in, "out": policy_out, "seed": recipe.seed}
    train.update(recipe.train.stage_fields() if recipe.train is not None else {})
    if k > 0 and recipe.fixed_data is not None:
        f = recipe.fixed_data
        fixed = {
            "out": str(folder),
            "source": f.source,
            "response": f.response,
            "prompt_column": f.prompt_column,
            "limit": f.limit,
            "exclude": str(HELDOUT.path(run_dir)),
            "suites": recipe.evaluate.suites,
            "seed": recipe.seed,
        }
        plan("fixed", "fixed", fixed)
        plan("train", "train", train)
    elif k > 0:
        g = recipe.generate
        generate = {
            "prompts": str(round_prompts(run_dir, k)),
            "pairs": recipe.pairs,
            "model": policy_in,
            "backend": g.backend,
            "out": str(folder),
            "round": k,
            "num_pos": g.num_pos,
            "num_neg": g.num_neg,
            "num_neutral": g.num_neutral,
            "sampling": {"seed": recipe.seed, "temperature": g.temperature, "top_p": g.top_p, "max_tokens": g.max_tokens},
            **g.stage_fields(),
            # a preference file's own answers: set only when kept, so a prompts-only round's stage key stays as it was
            **(
                {"responses": "keep", "layout": recipe.prompts.layout, "pku_rank": recipe.prompts.pku_rank}
                | ({"derived_from": recipe.prompts.source} if isinstance(recipe.prompts.source, str) else {})
                if recipe.prompts.responses == "keep"
                else {}
            ),
        }
        plan("generate", "generate", generate)
        for redo_class, sampling in recipe.redo.items():  # generate --redo CLASS, each pass after the one before
            changed = sampling.model_dump(exclude_none=True)
            label = "redo-" + redo_class.replace("=", "-")
            redo = {**generate, "redo": [redo_class], "sampling": {**generate["sampling"], **changed}}
            plan(label, "generate", redo, section=f"redo.{redo_class}")
        plan("score", "score", {"run": str(folder), **score})
        plan("rank", "rank", {"run": str(folder), **recipe.rank.stage_fields()})
        plan("audit", "audit", {"run": str(folder), **recipe.audit.stage_fields()})
        for fmt in recipe.exports:  # after the audit (they read it): its gate stops the round before any export
            plan(f"export-{fmt}", "export", {"run": str(folder), "format": fmt})
        if recipe.train is not None:
            plan("train", "train", train)
    if recipe.train is None:  # nothing trained, nothing to evaluate
        return planned
    e = recipe.evaluate
    base_eval = EVAL.path(round_folder(run_dir, 0))

    def evaluation(eval_dir: str, seed: int, base: Path | None) -> dict[str, Any]:
        heldout = str(HELDOUT.path(run_dir))
        return {
            "generate": evaluation_generate(
                e,
                prompts=heldout,
                pairs=recipe.pairs,
                model=policy_out,
                out=eval_dir,
                seed=seed,
                samples=e.samples,
                num_pos=int(k == 0),
                round=k,
            ),
            "score": {"run": eval_dir, **score},
            "samples": e.samples,
            "suites": e.suites,
            "suite_limit": e.suite_limit,
            "base_eval": None if base is None else str(base),
            "preferred": str(base_eval),
        }

    plan("evaluate", "evaluate", evaluation(str(EVAL.path(folder)), recipe.seed, None if k == 0 else base_eval))
    if k == 0 and e.negative_control:  # the base model against itself, another seed: what "no effect" looks like
        plan("evaluate-reseeded", "evaluate", evaluation(str(EVAL_RESEEDED.path(folder)), recipe.seed + 1, base_eval))
    return planned


def changed_fields(recorded: dict[str, Any], recipe: Recipe) -> list[str]:
    """The top-level recipe fields that differ between a run folder's recorded identity and `recipe`. The recorded one
    is read through today's schema first, so a field added since (with its default) is no change."""
    try:
        recorded = recipe_identity(Recipe.model_validate({**recorded, "rounds": recipe.rounds}))
    except ValidationError:
        pass  # recorded by a recipe this version cannot read: compare as written
    now = recipe_identity(recipe)
    return sorted(key for key in set(now) | set(recorded) if recorded.get(key) != now.get(key))


def recipe_identity(recipe: Recipe) -> dict[str, Any]:
    """What a run folder is bound to: the whole recipe except the number of rounds (a run can be extended), where it
    is published (push: does not change the data; added to a finished run, it pushes its rounds), a section's
    spending caps (max_cost, max_total_tokens: a higher cap continues a round its cap stopped) and the sections of
    stages that run again when they change (audit:, rounds/stages.py `section_may_change`)."""
    changeable = [stage.recipe_section for stage in STAGES.values() if stage.section_may_change]  # audit: its stage reruns
    identity = {k: v for k, v in recipe.model_dump(mode="json").items() if k not in ("rounds", "push", *changeable)}
    sections = [section for section in identity.values() if isinstance(section, dict)]
    for fields in [*sections, *(section["options"] for section in sections if isinstance(section.get("options"), dict))]:
        for cap in BudgetOptions.model_fields:
            fields.pop(cap, None)
    return identity
