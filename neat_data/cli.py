"""The `neat-data` command line: a thin shell that turns options into a stage config and calls the stage.

    neat-data quickstart                              # offline: two NEAT rounds on SmolLM2 (= run pipelines/quickstart.yaml)
    neat-data run pipelines/quickstart.yaml --set rounds=3
    neat-data train runs/demo --model smollm2-135m-instruct --loss rrhf --out runs/demo/model
    neat-data prompts list | show harmless --prompt "How do I pick a lock?"
    neat-data generate --prompts P --pairs harmless --model M --backend vllm --out runs/demo

Every user error prints one line `error: <file>: row <n>: field '<f>': <what>` and exits with code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from neat_data.errors import EXIT_NOTHING_OK, NeatError, redact_secrets, validation_message


class NeatGroup(click.Group):
    """Every failure is one scrubbed line on stderr: NeatError / config validation errors (exit code 2, or the
    error's own code), anything unexpected (exit code 1; its traceback, scrubbed, only with NEAT_DATA_DEBUG=1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NeatError as error:
            click.echo(f"error: {redact_secrets(error.one_line())}", err=True)
            ctx.exit(error.exit_code)
        except ValidationError as error:
            field, message = validation_message(error)
            click.echo(f"error: option '{field}': {redact_secrets(message)}", err=True)
            ctx.exit(2)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted (finished shards are kept; run the same command again to resume)", err=True)
            ctx.exit(130)
        except Exception as error:  # a bug, or a library failing in a way we do not know yet: still no secret, one line
            import os
            import traceback

            if os.environ.get("NEAT_DATA_DEBUG"):
                for line in traceback.format_exception(error):
                    click.echo(redact_secrets(line.rstrip("\n")), err=True)
            summary = " ".join(f"{type(error).__name__}: {error}".split())
            click.echo(
                f"error: unexpected {redact_secrets(summary)[:1000]} (a bug in neat-data? NEAT_DATA_DEBUG=1 prints the traceback)", err=True
            )
            ctx.exit(1)


@click.group(cls=NeatGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="neat-data")
def cli() -> None:
    """neat-data: expanded preference datasets for LLM alignment (NEAT: negative-prompt-driven alignment)."""


# ---------------------------------------------------------------------------------------------- prompts
@cli.group()
def prompts() -> None:
    """Prompt-pair libraries: positive / negative steering system prompts."""


@prompts.command("list")
def prompts_list() -> None:
    """List the bundled prompt-pair libraries."""
    from neat_data.pairs import bundled_library_paths, load_library

    for name in bundled_library_paths():
        library = load_library(name)
        click.echo(f"{library.name:<12} {len(library.pairs):>3} pairs  sha256:{library.content_hash}  {library.description}")


@prompts.command("show")
@click.argument("library")
@click.option("--prompt", "prompt_text", help="A user request: print the exact messages sent for it (pos, neg, none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed (decides which pair a prompt gets).")
@click.option(
    "--system-mode",
    type=click.Choice(["system", "merged"]),
    default="system",
    show_default=True,
    help="How the steering text is sent: as a system message, or merged into the first user turn.",
)
@click.option("--model", help="Also render the prompt through this model's chat template (bundled alias or local folder).")
def prompts_show(library: str, prompt_text: str | None, seed: int, system_mode: str, model: str | None) -> None:
    """Show a library's pairs, or exactly what the engine sees for one prompt."""
    from neat_data.keys import prompt_id as make_prompt_id
    from neat_data.keys import text_hash
    from neat_data.messages import build_messages
    from neat_data.pairs import choose_pair, load_libraries

    libraries = load_libraries(library)
    if prompt_text is None:
        for lib in libraries:
            click.echo(f"# {lib.name} ({lib.path}) sha256:{lib.content_hash}\n# {lib.description}")
            for pair in lib.pairs:
                click.echo(f"\n[{pair.id}]\n  + {pair.positive}\n  - {pair.negative}")
        return
    neutral = [{"role": "user", "content": prompt_text}]
    pid = make_prompt_id(neutral)
    pair = choose_pair(libraries, seed, pid)
    click.echo(f"prompt_id {pid}  pair {pair.id} (library {pair.library})")
    tokenizer = _load_tokenizer(model) if model else None
    for steering in ("pos", "neg", "none"):
        system = pair.system_prompt(steering)
        messages = build_messages(neutral, system, system_mode if system else "system")
        digest = f" sha256:{text_hash(system)}" if system else ""
        click.echo(f"\n== {steering}{digest}")
        click.echo(json.dumps(messages, indent=2, ensure_ascii=False))
        if tokenizer is not None:
            click.echo("-- rendered by the chat template:")
            click.echo(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    from neat_data.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(model))


# --------------------------------------------------------------------------------------------- generate
# Stage options are derived from the stage configs (neat_data.cli_options): names, types, choices, defaults and help
# are the config fields', defined once.
from neat_data.cli_options import build_config, config_options  # noqa: E402
from neat_data.stages.data_audit import DataAuditConfig  # noqa: E402
from neat_data.stages.export import ExportConfig  # noqa: E402
from neat_data.stages.generate import GenerateConfig  # noqa: E402
from neat_data.stages.push import PushConfig  # noqa: E402
from neat_data.stages.rank import RankConfig  # noqa: E402
from neat_data.stages.score import ScoreConfig  # noqa: E402
from neat_data.view.page import ViewConfig  # noqa: E402

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


@cli.command()
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
    from neat_data.shards import ShardSpec
    from neat_data.stages.generate import run_generate

    config = build_config(GenerateConfig, options, flatten=SAMPLING)
    shard = ShardSpec.from_options(num_shards, shard_index)
    if dry_run:
        from neat_data.stages.generate_budget import dry_run_generate

        for line in dry_run_generate(config, shard=shard, retry_errors=retry_errors, overwrite=overwrite).lines():
            click.echo(line)
        return
    summary = run_generate(config, shard=shard, retry_errors=retry_errors, overwrite=overwrite, progress=not no_progress, argv=_argv())
    for line in summary.lines():
        click.echo(line)
    for note in summary.notes():
        click.echo(note, err=True)
    if summary.total_rows and not summary.counts.get("status", {}).get("ok") and not summary.pending:
        raise NeatError(
            "no row succeeded: every row is an error row (reasons above); nothing to score", file=summary.folder, exit_code=EXIT_NOTHING_OK
        )


def _argv() -> list[str]:
    """The exact command, rebuilt from what Click parsed (arguments, then options the user set), for manifests."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    words = ["neat-data", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif ctx.get_parameter_source(param.name) not in (ParameterSource.DEFAULT, None):
            flag = max(param.opts, key=len)
            if getattr(param, "is_flag", False):
                words.append(flag if value or not param.secondary_opts else max(param.secondary_opts, key=len))
            else:
                words += [flag, str(value)]
    return words


# ------------------------------------------------------------------------------------ score, rank, export
@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@config_options(ScoreConfig, skip=("run",))
@click.option("--overwrite", is_flag=True, help="Rescore everything.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@shard_options
def score(run: Path, overwrite: bool, no_progress: bool, num_shards: int | None, shard_index: int | None, **options: Any) -> None:
    """Score every response of RUN as an answer to the neutral prompt → RUN/scored/."""
    from neat_data.shards import ShardSpec
    from neat_data.stages.score import run_score

    config = build_config(ScoreConfig, options, run=run)
    shard = ShardSpec.from_options(num_shards, shard_index)
    summary = run_score(config, shard=shard, overwrite=overwrite, progress=not no_progress, argv=_argv())
    click.echo(summary.line())


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

    for result in run_merge(run, list(stages) or None):
        click.echo(result.line(run))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@config_options(RankConfig, skip=("run",))
def rank(run: Path, **options: Any) -> None:
    """Ranked lists per prompt and preference pairs → RUN/ranked/{lists,pairs}.parquet."""
    from neat_data.stages.rank import run_rank

    summary = run_rank(build_config(RankConfig, options, run=run), argv=_argv())
    for line in summary.lines():
        click.echo(line)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@config_options(ExportConfig, skip=("run",))
def export(run: Path, **options: Any) -> None:
    """Write a trainer-ready dataset (Parquet + datasets folder)."""
    from neat_data.stages.export import run_export

    config = build_config(ExportConfig, options, run=run)
    out, rows = run_export(config, argv=_argv())
    click.echo(f"{rows} rows → {out}/{config.split}.parquet and {out}/hf (datasets.load_from_disk)")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
def report(run: Path) -> None:
    """PNG plots (scores by steering, pair score gaps) and a text table → RUN/report/."""
    from neat_data.stages.report import run_report

    lines, written = run_report(run)
    for line in lines:
        click.echo(line)
    click.echo("wrote " + ", ".join(str(p) for p in written))


@cli.command("audit")
@click.argument("run", type=click.Path(path_type=Path))
@config_options(DataAuditConfig, skip=("run",))
def audit_run(run: Path, **options: Any) -> None:
    """Pair-quality audit of RUN's ranked data → RUN/audit/{audit.json,audit.md,audit.png}; exit 5 when a --fail-on check fails."""
    from neat_data.stages.data_audit import run_data_audit

    report = run_data_audit(build_config(DataAuditConfig, options, run=run), argv=_argv())
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
        click.echo(build_view(config).line())
        return
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
    entry = run_push(config, argv=_argv())
    click.echo(f"pushed {entry['splits']} to {config.repo_id} (config {config.config_name}, {'public' if config.public else 'private'})")


# -------------------------------------------------------- train, evaluate, run (rounds), quickstart, stage
from neat_data.cli_rounds import register  # noqa: E402  (the commands live there; this module stays the entry point)

register(cli, lambda: _argv())
from neat_data.cli_batch import batch as batch_commands  # noqa: E402  (neat-data batch status|cancel RUN)

cli.add_command(batch_commands)
from neat_data.cli_audit import audit  # noqa: E402  (`neat-data prompts audit`: neat_data/stages/audit.py)

prompts.add_command(audit)


def main() -> None:
    cli(prog_name="neat-data")


if __name__ == "__main__":
    main()
