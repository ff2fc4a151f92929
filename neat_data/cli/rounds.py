"""Commands of training and rounds: `train`, `evaluate`, `run`, `quickstart`, and the internal `stage`.

    neat-data train runs/demo --model smollm2-135m-instruct --loss rrhf --out runs/demo/model
    neat-data evaluate runs/demo/eval --model runs/demo/model --heldout heldout.jsonl
    neat-data run pipelines/quickstart.yaml --set rounds=3

`train` options are made from `TrainConfig`'s fields, `evaluate`'s from `EvaluateConfig` and the recipe's
`EvaluateSpec` (names, types, defaults and help in one place).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, get_args

import click
from pydantic import BaseModel, ConfigDict, Field

from neat_data.cli.main import cli, command_argv
from neat_data.cli.options import build_config, config_options, option_names
from neat_data.cli.stages import echo_result
from neat_data.core import layout
from neat_data.core.errors import EXIT_CHECK_FAILED, NeatError, redact_secrets, register_secret_fields
from neat_data.rounds.sections import EvaluateSpec, evaluation_generate
from neat_data.rounds.stages import STAGES, StageKindName
from neat_data.scorers import SCORER_HELP
from neat_data.stages.evaluate import EvaluateConfig
from neat_data.train.trainer import TrainConfig


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--model", required=True, help="Policy to train: bundled alias, local HF folder or Hub id.")
@click.option("--out", type=click.Path(path_type=Path), help="Output HF folder (default: model/ in DATA's folder).")
@config_options(TrainConfig, skip=("data", "model", "out"))
def train(data: Path, model: str, out: Path | None, **options: Any) -> None:
    """Train the policy on DATA's ranked export with the NEAT loss (ranking + LM) → an HF folder.

    DATA: a run folder (its export/ranked/train.parquet), an export folder or a ranked Parquet file.
    Several processes: torchrun --nproc-per-node N -m neat_data.cli train … (or accelerate launch)."""
    from neat_data.train.trainer import progress_line, run_train

    default_out = layout.MODEL.path(data.parent if data.is_file() else data)
    config = build_config(TrainConfig, options, data=data, model=model, out=out or default_out)
    summary = run_train(config, argv=command_argv(), log=lambda record: click.echo(progress_line(record), err=True))
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns the same summary
        echo_result(summary.result())


class EvaluateInputs(BaseModel):
    """What the `evaluate` command names itself (a recipe's round runner sets these from the recipe and the round)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The policy to evaluate.")
    heldout: str = Field(description="Held-out prompts (.jsonl/.parquet/.csv/hf://).")
    pairs: list[str] = Field(
        default_factory=lambda: ["harmless"], description="Pair libraries (self-contrast takes its steering texts from them)."
    )
    scorer: str = Field("self-contrast", description=f"{SCORER_HELP}.")
    scorer_model: str | None = Field(
        None, description="Reward model / self-contrast reference (default: --model; name the base model to compare rounds)."
    )
    base_url: str | None = Field(None, description="openai: endpoint.")
    seed: int = Field(0, ge=0, description="Sampling seed.")


# evaluate's options, each from one config: what the command names (EvaluateInputs), the held-out generation's fields
# that a recipe's `evaluate:` section also sets (EvaluateSpec: backend, sampling — one default for CLI and recipe), and
# the evaluation's own fields (EvaluateConfig).
EVALUATION_SKIP = ("generate", "score")
GENERATION_SKIP = ("samples", "suites", "suite_limit", "negative_control")
INPUT_NAMES = set(option_names(EvaluateInputs))
GENERATION_NAMES = set(option_names(EvaluateSpec, skip=GENERATION_SKIP))


@cli.command()
@click.argument("eval_dir", type=click.Path(path_type=Path))
@config_options(EvaluateInputs)
@config_options(EvaluateSpec, skip=GENERATION_SKIP)
@config_options(EvaluateConfig, skip=EVALUATION_SKIP)
def evaluate(eval_dir: Path, **options: Any) -> None:
    """Held-out evaluation of a policy with the neutral prompt: reward (95% CI), win rate vs base, perplexity; with
    --suites, per suite refusal rate, P(offensive), VADER tone, length and truncation (95% CIs; paired vs --base-eval).
    These measure refusal wording, offensiveness and tone, not helpfulness."""
    from neat_data.stages.evaluate import run_evaluate

    inputs = build_config(EvaluateInputs, {k: v for k, v in options.items() if k in INPUT_NAMES})
    generation = build_config(EvaluateSpec, {k: v for k, v in options.items() if k in GENERATION_NAMES})
    evaluation = {k: v for k, v in options.items() if k not in GENERATION_NAMES | INPUT_NAMES}
    samples = options.get("samples") or EvaluateConfig.model_fields["samples"].default
    generate = evaluation_generate(
        generation,
        prompts=inputs.heldout,
        pairs=inputs.pairs,
        model=inputs.model,
        out=str(eval_dir),
        seed=inputs.seed,
        samples=samples,
        extra={"base_url": inputs.base_url},
    )
    score = {"run": str(eval_dir), "scorer": inputs.scorer, "model": inputs.scorer_model or inputs.model}
    config = build_config(EvaluateConfig, evaluation, generate=generate, score=score)
    click.echo(json.dumps(run_evaluate(config, argv=command_argv()), indent=2))


@cli.command("run")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (dotted: train.lr=1e-5). Repeatable.")
@click.option("--overwrite", is_flag=True, help="Delete the run folder's contents and start over.")
def run_command(recipe: Path, overrides: tuple[str, ...], overwrite: bool) -> None:
    """Online NEAT rounds from a recipe: generate → score → rank → export → train → evaluate, per round."""
    _run_recipe(recipe, list(overrides), overwrite)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), help="Run folder (default runs/quickstart).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of pipelines/quickstart.yaml.")
@click.option("--overwrite", is_flag=True, help="Start over.")
def quickstart(out: Path | None, overrides: tuple[str, ...], overwrite: bool) -> None:
    """Offline demo = `neat-data run pipelines/quickstart.yaml`: two NEAT rounds on SmolLM2-135M-Instruct (CPU)."""
    from neat_data.core.resources import bundled_dir

    _run_recipe(bundled_dir("pipelines") / "quickstart.yaml", list(overrides) + ([f"out={out}"] if out else []), overwrite)


@cli.command("stage", hidden=True)
@click.argument("kind", type=click.Choice(list(get_args(StageKindName))))
@click.argument("config_path", type=click.Path(path_type=Path, exists=True))
@click.option("--summary", "summary_path", type=click.Path(path_type=Path), help="Also write the summary lines here.")
def stage(kind: StageKindName, config_path: Path, summary_path: Path | None) -> None:
    """Run one stage from a resolved config JSON (what `neat-data run` starts, one process per stage)."""
    if os.getpgid(0) == os.getpid():
        # `neat-data run` starts each stage as the leader of its own process group: a SIGTERM (passed on by the run, or
        # sent because the run died) ends the stage and every process it started (an engine's workers) together.
        signal.signal(signal.SIGTERM, lambda signum, frame: os.killpg(0, signal.SIGKILL))
    entry = STAGES[kind]
    config = entry.config_class.model_validate(json.loads(config_path.read_text(encoding="utf-8")))
    register_secret_fields(config)
    from neat_data.core.files import atomic_write_bytes

    try:
        result = entry.run(config, command_argv())
    except NeatError as error:
        if summary_path is not None and error.exit_code == EXIT_CHECK_FAILED:  # the run stops with the stage's own line
            atomic_write_bytes(summary_path, (redact_secrets(error.one_line()) + "\n").encode("utf-8"))
        raise
    echo_result(result, in_round=True)  # the same lines as the stage's own command; what stops a round raises here
    if summary_path is not None:
        atomic_write_bytes(summary_path, ("\n".join(result.lines) + "\n").encode("utf-8"))


def _run_recipe(path: Path, overrides: list[str], overwrite: bool) -> None:
    from neat_data.rounds.recipe import load_recipe
    from neat_data.rounds.runner import run_rounds
    from neat_data.stages.round_report import table_lines

    recipe = load_recipe(path, overrides)
    run_dir = recipe.run_dir()
    if recipe.variants:
        from neat_data.rounds.runner import run_variants

        run_variants(recipe, overwrite=overwrite, echo=lambda line: click.echo(line, err=True))
        click.echo("\n" + (run_dir / "comparison.md").read_text(encoding="utf-8"))
        click.echo(
            f"Variants: {run_dir}/<variant>/ (each a `neat-data run` folder; rounds.md per variant)"
            f"\nPlot:     {run_dir}/comparison.png   table: {run_dir}/comparison.md   data: {run_dir}/comparison.json"
        )
        return
    rows = run_rounds(recipe, overwrite=overwrite, echo=lambda line: click.echo(line, err=True))
    if recipe.train is None:  # one round of data, nothing trained or evaluated: no table of rounds to show
        exports = ", ".join(recipe.exports)
        click.echo(f"\nDatasets: {run_dir}/round_01/export/ ({exports})   manifest: {run_dir}/manifest.json")
        return
    click.echo("\n" + "\n".join(table_lines(rows)))
    last = recipe.rounds
    click.echo(
        f"\nDatasets: {run_dir}/round_NN/export/ (ranked{', ' + ', '.join(f for f in recipe.exports if f != 'ranked') if len(recipe.exports) > 1 else ''})"
        f"\nModel:    {run_dir}/round_{last:02d}/model (HF folder; vLLM and transformers load it)"
        f"\nPlot:     {run_dir}/rounds.png   table: {run_dir}/rounds.md   manifest: {run_dir}/manifest.json"
    )
