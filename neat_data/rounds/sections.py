"""The sections of a recipe: the prompts and their split, the fixed data of the positive control, and one flat section
per stage (`StageSection`: its named fields plus any other field of the stage's config; what the round runner sets
itself is refused). `evaluation_generate` turns the evaluation's settings into the held-out generation's config, for
the recipe and the `evaluate` command alike."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from neat_data.core.errors import NeatError
from neat_data.core.prompts_in import PkuRank, PreferenceLayout, ResponsesMode
from neat_data.engines import BackendName
from neat_data.engines.base import MaxTokens, Temperature, TopP
from neat_data.stages.score import NegativeScore


class PromptsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | list[str] = Field(
        description="Prompts: .jsonl/.parquet/.csv, hf://… or data://… (relative paths: from the recipe's "
        "folder); a list is one pool of all of them, e.g. benign prompts and data://strongreject."
    )
    prompt_column: str | None = None
    limit: int | None = Field(None, ge=1, description="Read only the first N unique prompts of each source.")
    responses: ResponsesMode = Field(
        "drop",
        description="keep: the source is preference data (generate --responses keep): each training prompt's own answers "
        "join its round's generations as rows of steering 'dataset'.",
    )
    layout: PreferenceLayout = Field("auto", description="With responses: keep, the source's layout (generate --layout).")
    pku_rank: PkuRank = Field("safer", description="With layout pku, the preferred answer: safer or better (generate --pku-rank).")
    heldout_source: str | None = Field(
        None,
        description="Take the held-out prompts from here instead of the pool (e.g. benign prompts "
        "only, so the over-refusal suite is over benign requests); they are left out of the pool.",
    )
    heldout: int = Field(16, ge=0, description="Held-out prompts for evaluation (never trained on); 0 only with train: null.")
    per_round: int = Field(32, ge=1, description="Fresh training prompts per round.")
    decontaminate: bool = Field(
        True,
        description="Leave out training prompts that share an 8-gram (after normalisation) with an "
        "evaluation suite's prompts or a held-out prompt; counted in the manifest.",
    )

    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


class FixedDataSpec(BaseModel):
    """Train every round on fixed (prompt, response) pairs instead of generate → score → rank: the positive control
    (harmful prompts answered with a refusal) that shows the evaluation can see an effect."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Prompts (any prompts source, e.g. data://strongreject).")
    response: str = Field(min_length=1, description="The one response every prompt is paired with (e.g. a refusal).")
    prompt_column: str | None = None
    limit: int | None = Field(None, ge=1, description="The first N unique prompts of the source (after decontamination).")


class StageSection(BaseModel):
    """A recipe section of one stage, written flat: the fields named below, and any other field of the stage's config
    (`max_model_len`, `batch_size`, `base_url`, …) beside them — validated by the stage's own config class when the
    recipe loads, so an unknown or invalid key is one line naming `<section>.<key>`. Fields the round runner sets
    itself (`RUNNER_SETS`) are refused here. The older form `options: {…}` still loads (its keys are moved up; a key
    given both ways is refused)."""

    model_config = ConfigDict(extra="allow")
    section: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        written = {key: key for key in values}  # each key as the user wrote it, for the error line
        if "options" in values:
            options = values.pop("options")
            if not isinstance(options, dict):
                raise ValueError(f"options must be a mapping of {cls.section} fields, not {type(options).__name__} (or write them flat)")
            for key, value in options.items():
                if key in values:
                    raise ValueError(f"options.{key} duplicates {key}: set it once, directly in the section")
                values[key], written[key] = value, f"options.{key}"
        for key in values:
            if key in RUNNER_SETS[cls.section]:
                raise ValueError(f"{written[key]} is set by the round runner (from the recipe's top level or the round); leave it out here")
        return values

    def stage_fields(self) -> dict[str, Any]:
        """The section's other stage-config fields, as written."""
        return dict(self.model_extra or {})


class GenerateSpec(StageSection):
    section: ClassVar[str] = "generate"

    backend: BackendName = "vllm"
    num_pos: int = Field(2, ge=0)
    num_neg: int = Field(2, ge=0, description="0 = the positive-only baseline.")
    num_neutral: int = Field(0, ge=0)
    temperature: Temperature = 0.8
    top_p: TopP = 0.95
    max_tokens: MaxTokens = 256


class ScoreSpec(StageSection):
    section: ClassVar[str] = "score"

    scorer: str = "self-contrast"
    model: str | None = Field(None, description="Reward model / self-contrast reference (default: the base model, fixed across rounds).")
    negative_score: NegativeScore = "scored"


class RedoSampling(BaseModel):
    """A re-generation pass's sampling: what changes for the rows it generates again (the rows keep their keys)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None


class RankSpec(StageSection):
    """Any RankConfig field (pairs, pos_vs_neg_by, min_margin, drop_truncated, …)."""

    section: ClassVar[str] = "rank"


class AuditSpec(StageSection):
    """Any DataAuditConfig field: fail_on (the audit's checks whose FAIL stops the round before its exports and
    training), the thresholds (length_separability_max, truncated_max, …), sample_prompts, resamples, seed."""

    section: ClassVar[str] = "audit"


class TrainSpec(StageSection):
    """Any TrainConfig field (loss, lr, epochs, top_layers, lora_rank, …)."""

    section: ClassVar[str] = "train"


# Fields the round runner sets itself in each stage's config (a recipe names them once, at the top, or not at all);
# tests/test_recipe_sections.py checks they are exactly the ones plan_round writes.
RUNNER_SETS = {
    "generate": {"prompts", "pairs", "model", "out", "round", "sampling", "seed", "responses", "layout", "pku_rank", "derived_from"},
    "score": {"run"},
    "rank": {"run"},
    "audit": {"run"},
    "train": {"data", "model", "out", "seed"},
    "evaluate": {"prompts", "pairs", "model", "out", "round", "sampling", "seed", "num_pos", "num_neg", "num_neutral", "generate", "score"},
}


class EvaluateSpec(StageSection):
    """The evaluation: its own fields, and any field of the held-out generation's GenerateConfig beside them."""

    section: ClassVar[str] = "evaluate"

    backend: BackendName = Field("transformers", description="transformers: no engine start for a small held-out set.")
    temperature: Temperature = Field(0.7, description="Sampling temperature of the held-out and suite responses.")
    top_p: TopP = Field(0.95, description="Nucleus sampling of the held-out and suite responses.")
    max_tokens: MaxTokens = Field(128, description="Longest held-out / suite response, in tokens.")
    samples: int = Field(1, ge=1, le=256, description="Responses per held-out / suite prompt (k); intervals resample prompts.")
    suites: list[str] = Field(
        default_factory=list, description="Evaluation suites (prompts/eval/ names or YAML paths), e.g. [harmbench, benign]."
    )
    suite_limit: int | None = Field(None, ge=1, description="At most N prompts per suite (a seeded subset): keeps a CPU run small.")
    negative_control: bool = Field(
        False,
        description="Round 0 also evaluates the base model with another seed against itself: the "
        "paired intervals of that difference show the evaluation's noise (they should hold 0).",
    )

    @model_validator(mode="after")
    def _suites_exist(self) -> EvaluateSpec:
        from neat_data.safety.suites import check_suites

        try:
            check_suites(self.suites)  # a bad suite file or a missing data package stops the recipe, not round 0's evaluate
        except NeatError as error:
            raise ValueError(f"suites: {error.one_line()}") from None
        return self


def evaluation_generate(
    spec: EvaluateSpec,
    *,
    prompts: str,
    pairs: list[str],
    model: str,
    out: str,
    seed: int,
    samples: int,
    num_pos: int = 0,
    round: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The held-out generation's GenerateConfig values, from the evaluation's settings (a recipe's `evaluate:` or the
    `evaluate` command's options): neutral prompt only, `samples` per prompt (num_pos 1 on round 0: the preferred
    set perplexity is measured on)."""
    values: dict[str, Any] = {
        "prompts": prompts,
        "pairs": pairs,
        "model": model,
        "backend": spec.backend,
        "out": out,
        "num_pos": num_pos,
        "num_neg": 0,
        "num_neutral": samples,
        "sampling": {"seed": seed, "temperature": spec.temperature, "top_p": spec.top_p, "max_tokens": spec.max_tokens},
        **spec.stage_fields(),
        **(extra or {}),
    }
    if round is not None:
        values["round"] = round
    return values
