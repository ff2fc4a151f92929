"""The `neat-data` command group and its error contract; the commands live beside this module (stages.py, prompts.py,
rounds.py, batch.py), each a thin shell that turns options into a stage config and calls the stage.

    neat-data quickstart                              # offline: two NEAT rounds on SmolLM2 (= run pipelines/quickstart.yaml)
    neat-data run pipelines/quickstart.yaml --set rounds=3
    neat-data train runs/demo --model smollm2-135m-instruct --loss rrhf --out runs/demo/model
    neat-data prompts list | show harmless --prompt "How do I pick a lock?"
    neat-data generate --prompts P --pairs harmless --model M --backend vllm --out runs/demo

Every user error prints one line `error: <file>: row <n>: field '<f>': <what>` and exits with code 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from pydantic import ValidationError

from neat_data.core.errors import NeatError, environment_error, redact_secrets, validation_message


class ClosedPipeSafe:
    """sys.stdout / sys.stderr that stop writing, quietly, once the reader has closed the pipe (`neat-data … | head -1`):
    the command goes on to the end of its work (files are written before any summary line anyway) and exits with its
    own code. The descriptor is pointed at /dev/null so that the interpreter's last flush cannot fail either."""

    def __init__(self, stream: Any):
        self._stream = stream

    def _closed(self) -> None:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):  # not a real descriptor (click's test runner): nothing to flush at exit
            pass

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class NeatGroup(click.Group):
    """Every failure is one scrubbed line on stderr: NeatError / config validation errors and what the environment
    did (a full disk, a read-only folder, a dangling link: exit code 2, or the error's own code), anything unexpected
    (exit code 1; its traceback, scrubbed, only with NEAT_DATA_DEBUG=1). A closed stdout pipe is not a failure."""

    def invoke(self, ctx: click.Context) -> Any:
        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = ClosedPipeSafe(sys.stdout), ClosedPipeSafe(sys.stderr)
        try:
            return self._invoke(ctx)
        finally:
            sys.stdout, sys.stderr = streams

    def _invoke(self, ctx: click.Context) -> Any:
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
            import traceback

            environmental = environment_error(error) if isinstance(error, OSError) else None
            if environmental is not None:
                click.echo(f"error: {redact_secrets(environmental.one_line())}", err=True)
                ctx.exit(environmental.exit_code)
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


def command_argv() -> list[str]:
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


def main() -> None:
    """The console script (`neat_data.cli:main`: importing the package has registered every command)."""
    cli(prog_name="neat-data")
