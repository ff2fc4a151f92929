"""Commands of the single stages: generate, score, merge, rank, export, report, view, push.

Stage options are derived from the stage configs (neat_data.cli.options): names, types, choices, defaults and help
are the config fields', defined once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from neat_data.cli.main import cli, command_argv
from neat_data.cli.options import SectionedCommand, build_config, config_options
from neat_data.core.stage import StageResult
from neat_data.stages.audit.stage import DataAuditConfig
from neat_data.stages.export import ExportConfig
from neat_data.stages.generate.stage import GenerateConfig
from neat_data.stages.push import PushConfig
from neat_data.stages.rank.stage import RankConfig
from neat_data.stages.score import ScoreConfig
from neat_data.view.page import ViewConfig


def echo_result(result: StageResult, *, in_round: bool = False) -> None:
    """A stage's summary lines (stdout) and notes (stderr), then what ends it: every stage command and `neat-data
    stage` (what `neat-data run` starts) print a stage's result through here."""
    for line in result.lines:
        click.echo(line)
    for note in result.notes:
        click.echo(note, err=True)
    result.finish(in_round=in_round)


SAMPLING = ("sampling",)  # GenerateConfig.sampling's fields are top-level options: --temperature, --top-p, --max-tokens, --seed


def shard_options(function: Any) -> Any:
    """--num-shards / --shard-index (generate and score): this process does one hash-slice of the prompts."""
    function = click.option("--shard-index", type=int, help="Which shard this process writes, 0..N-1 (with --num-shards).")(function)
    return click.option(
        "--num-shards",
        type=int,
        help="Split the prompts into N shards by a hash of prompt_id; run one process "
        "per shard (same command, --shard-index 0..N-1), then `neat-data merge`. See docs/SCALING.md.",
    )(function)


@cli.command(cls=SectionedCommand)
@config_options(GenerateConfig, flatten=SAMPLING)
@click.option("--retry-errors", is_flag=True, help="Also redo rows that ended as errors.")
@click.option("--overwrite", is_flag=True, help="Delete this run's generations and start over.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--dry-run", is_flag=True, help="Print the planned requests, prompt tokens and (with prices) the cost; write and send nothing."
)
@shard_options
def generate(
    retry_errors: bool,
    overwrite: bool,
    no_progress: bool,
    dry_run: bool,
    num_shards: int | None,
    shard_index: int | None,
    **options: Any,
) -> None:
    """Sample responses under positive / negative (/ no) steering system prompts into <out>/generations/."""
    from neat_data.core.shards import ShardSpec
    from neat_data.stages.generate.stage import run_generate

    config = build_config(GenerateConfig, options, flatten=SAMPLING)
    shard = ShardSpec.from_options(num_shards, shard_index)
    if dry_run:
        from neat_data.stages.generate.budget import dry_run_generate

        for line in dry_run_generate(config, shard=shard, retry_errors=retry_errors, overwrite=overwrite).lines():
            click.echo(line)
        return
    summary = run_generate(
        config, shard=shard, retry_errors=retry_errors, overwrite=overwrite, progress=not no_progress, argv=command_argv()
    )
    echo_result(summary.result())


# ------------------------------------------------------------------------------------ score, rank, export
@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@config_options(ScoreConfig, skip=("run",))
@click.option("--overwrite", is_flag=True, help="Rescore everything.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@shard_options
def score(run: Path, overwrite: bool, no_progress: bool, num_shards: int | None, shard_index: int | None, **options: Any) -> None:
    """Score every response of RUN as an answer to the neutral prompt → RUN/scored/."""
    from neat_data.core.shards import ShardSpec
    from neat_data.stages.score import run_score

    config = build_config(ScoreConfig, options, run=run)
    shard = ShardSpec.from_options(num_shards, shard_index)
    echo_result(run_score(config, shard=shard, overwrite=overwrite, progress=not no_progress, argv=command_argv()).result())


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--stage",
    "stages",
    type=click.Choice(["generate", "score"]),
    multiple=True,
    help="Merge only this stage (repeatable; default: every stage run with --num-shards).",
)
def merge(run: Path, stages: tuple[str, ...]) -> None:
    """Check that every shard of RUN finished and keys are unique, then fold the shards into one table."""
    from neat_data.stages.merge import run_merge

    echo_result(StageResult([result.line(run) for result in run_merge(run, list(stages) or None)]))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@config_options(RankConfig, skip=("run",))
def rank(run: Path, **options: Any) -> None:
    """Ranked lists per prompt and preference pairs → RUN/ranked/{lists,pairs}.parquet."""
    from neat_data.stages.rank.stage import RANK

    echo_result(RANK.run(build_config(RankConfig, options, run=run), command_argv()))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@config_options(ExportConfig, skip=("run",))
def export(run: Path, **options: Any) -> None:
    """Write a trainer-ready dataset (Parquet + datasets folder)."""
    from neat_data.stages.export import EXPORT

    echo_result(EXPORT.run(build_config(ExportConfig, options, run=run), command_argv()))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
def report(run: Path) -> None:
    """PNG plots (scores by steering, pair score gaps) and a text table → RUN/report/."""
    from neat_data.stages.report import run_report

    lines, written = run_report(run)
    echo_result(StageResult([*lines, "wrote " + ", ".join(str(p) for p in written)]))


@cli.command("audit")
@click.argument("run", type=click.Path(path_type=Path))
@config_options(DataAuditConfig, skip=("run",))
def audit_run(run: Path, **options: Any) -> None:
    """Pair-quality audit of RUN's ranked data → RUN/audit/{audit.json,audit.md,audit.png}; exit 5 when a --fail-on check fails."""
    from neat_data.stages.audit.stage import run_data_audit

    report = run_data_audit(build_config(DataAuditConfig, options, run=run), argv=command_argv())
    for line in report.lines():
        click.echo(line)
    report.raise_for_failures()


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@config_options(ViewConfig, skip=("run",))
@click.option("--serve", is_flag=True, help="Serve every prompt on 127.0.0.1 instead (texts and search from a local server); Ctrl-C stops.")
@click.option("--port", type=int, default=8765, show_default=True, help="--serve: port (0 = any free one).")
def view(run: Path, serve: bool, port: int, **options: Any) -> None:
    """One self-contained page to look at RUN (prompts, responses, scores, pairs, rounds) → RUN/view.html."""
    from neat_data.view import build_view

    config = build_config(ViewConfig, options, run=run)
    if not serve:
        return echo_result(StageResult([build_view(config).line()]))
    from neat_data.view.serve import ViewServer

    server = ViewServer(config, port=port)
    click.echo(f"serving {server.data.prompts} prompts ({server.data.rows} responses) of {run} on {server.url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@config_options(PushConfig, skip=("run",))
def push(run: Path, **options: Any) -> None:
    """Push an export of RUN to a Hub dataset repo, with a merged dataset card."""
    from neat_data.stages.push import run_push

    config = build_config(PushConfig, options, run=run)
    entry = run_push(config, argv=command_argv())
    visibility = "public" if config.public else "private"
    echo_result(StageResult([f"pushed {entry['splits']} to {config.repo_id} (config {config.config_name}, {visibility})"]))
