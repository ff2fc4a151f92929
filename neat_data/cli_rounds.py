"""CLI commands of training and rounds: `train`, `evaluate`, `run`, `quickstart`, and the internal `stage`.

    neat-data train runs/demo --model smollm2-135m-instruct --loss rrhf --out runs/demo/model
    neat-data evaluate runs/demo/eval --model runs/demo/model --heldout heldout.jsonl
    neat-data run pipelines/quickstart.yaml --set rounds=3

`train` options are made from `TrainConfig`'s fields, `evaluate`'s from `EvaluateConfig` and the recipe's
`EvaluateSpec` (names, types, defaults and help in one place).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click


def register(cli: click.Group, argv: Any) -> None:
    """Add the commands to the main group (`argv()` rebuilds the command line for manifests)."""
    from neat_data.cli_options import build_config, config_options, option_names
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
        from neat_data.train.trainer import TrainConfig, run_train

        default_out = (data.parent if data.is_file() else data) / "model"
        config = build_config(TrainConfig, options, data=data, model=model, out=out or default_out)
        summary = run_train(
            config,
            argv=argv(),
            log=lambda r: click.echo(
                f"step {r['step']}: loss {r['loss']:.4f} (rank {r['rank_loss']:.4f}, lm {r['sft_loss']:.4f}) "
                f"rank-acc {r['rank_accuracy']:.2f} grad {r['grad_norm']:.2f} {r['tokens_per_s']:.0f} tok/s",
                err=True,
            ),
        )
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns the same summary
            click.echo(
                f"{summary.steps} steps on {summary.prompts} prompts × {summary.candidates / max(summary.prompts, 1):.1f} candidates, "
                f"{summary.tokens} tokens in {summary.seconds:.0f} s ({summary.tokens_per_second:.0f} tok/s) → {summary.out}"
            )

    from neat_data.recipe import EvaluateSpec
    from neat_data.stages.evaluate import EvaluateConfig

    # evaluate's options: the evaluation's own fields (EvaluateConfig), the held-out generation's fields that a
    # recipe's `evaluate:` section also sets (EvaluateSpec: backend, sampling — one default for CLI and recipe), and
    # the few that name the inputs.
    evaluation_skip = ("generate", "score")
    generation_skip = ("samples", "suites", "suite_limit", "negative_control", "options")
    generation_names = set(option_names(EvaluateSpec, skip=generation_skip))

    @cli.command()
    @click.argument("eval_dir", type=click.Path(path_type=Path))
    @click.option("--model", required=True, help="The policy to evaluate.")
    @click.option("--heldout", required=True, help="Held-out prompts (.jsonl/.parquet/.csv/hf://).")
    @click.option(
        "--pairs", default="harmless", show_default=True, help="Pair libraries (self-contrast takes its steering texts from them)."
    )
    @click.option(
        "--scorer", default="self-contrast", show_default=True, help="self-contrast | reward-model | judge | python:<module>:<function>."
    )
    @click.option(
        "--scorer-model", help="Reward model / self-contrast reference (default: --model; name the base model to compare rounds)."
    )
    @click.option("--base-url", help="openai: endpoint.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
    @config_options(EvaluateSpec, skip=generation_skip)
    @config_options(EvaluateConfig, skip=evaluation_skip)
    def evaluate(
        eval_dir: Path,
        model: str,
        heldout: str,
        pairs: str,
        scorer: str,
        scorer_model: str | None,
        base_url: str | None,
        seed: int,
        **options: Any,
    ) -> None:
        """Held-out evaluation of a policy with the neutral prompt: reward (95% CI), win rate vs base, perplexity; with
        --suites, per suite refusal rate, P(offensive), VADER tone, length and truncation (95% CIs; paired vs --base-eval).
        These measure refusal wording, offensiveness and tone, not helpfulness."""
        from neat_data.stages.evaluate import run_evaluate

        generation = build_config(EvaluateSpec, {k: v for k, v in options.items() if k in generation_names})
        evaluation = {k: v for k, v in options.items() if k not in generation_names}
        samples = options.get("samples") or EvaluateConfig.model_fields["samples"].default
        config = build_config(
            EvaluateConfig,
            evaluation,
            generate={
                "prompts": heldout,
                "pairs": pairs.split(","),
                "model": model,
                "backend": generation.backend,
                "out": str(eval_dir),
                "num_pos": 0,
                "num_neg": 0,
                "num_neutral": samples,
                "base_url": base_url,
                "sampling": {
                    "max_tokens": generation.max_tokens,
                    "temperature": generation.temperature,
                    "top_p": generation.top_p,
                    "seed": seed,
                },
            },
            score={"run": str(eval_dir), "scorer": scorer, "model": scorer_model or model},
        )
        click.echo(json.dumps(run_evaluate(config, argv=argv()), indent=2))

    @cli.command("run")
    @click.argument("recipe", type=click.Path(path_type=Path))
    @click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (dotted: train.lr=1e-5). Repeatable."
    )
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
        from neat_data.resources import bundled_dir

        _run_recipe(bundled_dir("pipelines") / "quickstart.yaml", list(overrides) + ([f"out={out}"] if out else []), overwrite)

    @cli.command("stage", hidden=True)
    @click.argument("name", type=click.Choice(STAGE_NAMES))
    @click.argument("config_path", type=click.Path(path_type=Path, exists=True))
    @click.option("--summary", "summary_path", type=click.Path(path_type=Path), help="Also write the summary lines here.")
    def stage(name: str, config_path: Path, summary_path: Path | None) -> None:
        """Run one stage from a resolved config JSON (what `neat-data run` starts, one process per stage)."""
        lines: list[str] = []

        def echo(line: str) -> None:
            lines.append(line)
            click.echo(line)

        run_stage_config(name, json.loads(config_path.read_text(encoding="utf-8")), [*argv()], echo)
        if summary_path is not None:
            from neat_data.runfolder import atomic_write_bytes

            atomic_write_bytes(summary_path, ("\n".join(lines) + "\n").encode("utf-8"))


STAGE_NAMES = ["generate", "score", "rank", "export", "train", "evaluate", "fixed"]  # what `neat-data run` starts


def run_stage_config(name: str, raw: dict[str, Any], argv: list[str], echo: Any = click.echo) -> None:
    from neat_data.errors import EXIT_NOTHING_OK, EXIT_PENDING, NeatError

    if name == "generate":
        from neat_data.stages.generate import GenerateConfig, run_generate

        summary = run_generate(GenerateConfig.model_validate(raw), argv=argv)
        echo(f"generations: {summary.total_rows} rows {summary.counts.get('status')} in {summary.seconds:.0f} s")
        if summary.pending:
            raise NeatError(
                f"{summary.pending['rows']} rows wait in batches {', '.join(summary.pending['batches'])}; run the same "
                "command again to collect them",
                file=summary.run_dir,
                exit_code=EXIT_PENDING,
            )
        if summary.total_rows and not summary.counts.get("status", {}).get("ok"):
            raise NeatError(
                "no generation succeeded (every row is an error row; their reasons are in the log)",
                file=summary.folder,
                exit_code=EXIT_NOTHING_OK,
            )
    elif name == "fixed":
        from neat_data.stages.fixed import FixedConfig, run_fixed

        rows, dropped = run_fixed(FixedConfig.model_validate(raw), argv=argv)
        echo(f"fixed data: {rows} prompts" + (f" ({dropped} left out: they share an 8-gram with an evaluation prompt)" if dropped else ""))
    elif name == "score":
        from neat_data.stages.score import ScoreConfig, run_score

        scored = run_score(ScoreConfig.model_validate(raw), argv=argv)
        echo(f"scored: {scored.rows} rows {scored.counts['score_status']} in {scored.seconds:.0f} s")
    elif name == "rank":
        from neat_data.stages.rank import RankConfig, run_rank

        for line in run_rank(RankConfig.model_validate(raw), argv=argv).lines():
            echo(line)
    elif name == "export":
        from neat_data.stages.export import ExportConfig, run_export

        out, rows = run_export(ExportConfig.model_validate(raw), argv=argv)
        echo(f"export: {rows} rows → {out}")
    elif name == "train":
        from neat_data.train.trainer import TrainConfig, run_train

        trained = run_train(TrainConfig.model_validate(raw), argv=argv)
        echo(
            f"train: {trained.steps} steps, {trained.tokens} tokens, {trained.tokens_per_second:.0f} tok/s, "
            f"loss {trained.first.get('loss', float('nan')):.4f} → {trained.last.get('loss', float('nan')):.4f}"
        )
    elif name == "evaluate":
        from neat_data.stages.evaluate import EvaluateConfig, run_evaluate

        metrics = run_evaluate(EvaluateConfig.model_validate(raw), argv=argv)
        low, high = metrics["reward_ci95"]
        extra = "".join(
            f" {label} {metrics[key]:.2f}"
            for key, label in (("win_rate_vs_base", "win-vs-base"), ("perplexity", "perplexity"))
            if metrics.get(key) is not None
        )
        echo(f"eval: {metrics['prompts']} held-out prompts, reward {metrics['reward_mean']:+.4f} [{low:+.4f}, {high:+.4f}]{extra}")
        for suite, entry in (metrics.get("suites") or {}).items():
            refusal = (entry.get("metrics") or {}).get("refusal")
            if refusal and refusal.get("mean") is not None:
                low, high = refusal["ci95"]
                vs = refusal.get("vs_base") or {}
                paired = f", vs base {vs['mean']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}]" if vs.get("mean") is not None else ""
                echo(f"      {suite}: refusal {refusal['mean']:.3f} [{low:.3f}, {high:.3f}] over {refusal['prompts']} prompts{paired}")


def _run_recipe(path: Path, overrides: list[str], overwrite: bool) -> None:
    from neat_data.recipe import load_recipe
    from neat_data.round_report import table_lines
    from neat_data.rounds import run_rounds

    recipe = load_recipe(path, overrides)
    run_dir = recipe.run_dir()
    if recipe.variants:
        from neat_data.rounds import run_variants

        run_variants(recipe, overwrite=overwrite, echo=lambda line: click.echo(line, err=True))
        click.echo("\n" + (run_dir / "comparison.md").read_text(encoding="utf-8"))
        click.echo(
            f"Variants: {run_dir}/<variant>/ (each a `neat-data run` folder; rounds.md per variant)"
            f"\nPlot:     {run_dir}/comparison.png   table: {run_dir}/comparison.md   data: {run_dir}/comparison.json"
        )
        return
    rows = run_rounds(recipe, overwrite=overwrite, echo=lambda line: click.echo(line, err=True))
    click.echo("\n" + "\n".join(table_lines(rows)))
    last = recipe.rounds
    click.echo(
        f"\nDatasets: {run_dir}/round_NN/export/ (ranked{', ' + ', '.join(f for f in recipe.exports if f != 'ranked') if len(recipe.exports) > 1 else ''})"
        f"\nModel:    {run_dir}/round_{last:02d}/model (HF folder; vLLM and transformers load it)"
        f"\nPlot:     {run_dir}/rounds.png   table: {run_dir}/rounds.md   manifest: {run_dir}/manifest.json"
    )
