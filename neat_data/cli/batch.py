"""`neat-data batch status RUN` and `neat-data batch cancel RUN`: the batches a run submitted (openai-batch, vllm-batch).

In:  a run folder; its batch journals (`batches.<stage>` in manifest.json, or `<run>/batches/<stage>/journal.json`).
Out: one line per batch (stage, record, batch id, status, requests done / failed / total, the last problem), then
     a total; `cancel` asks the server to cancel every unfinished openai-batch batch and says what happened.
Neither command writes the journal (a running stage may own it): the next run of the stage reads the new state
from the server, collects what finished and turns a cancelled batch's unfinished requests into error rows.
The API key comes from the variable each batch was submitted with (`--api-key-env` overrides it).

    neat-data batch status runs/demo
    neat-data batch cancel runs/demo --stage generate
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from neat_data.cli.main import cli
from neat_data.core.errors import register_secret_env


@cli.group("batch")
def batch() -> None:
    """Offline batches of a run (openai-batch, vllm-batch): status, cancel."""


def _records(run: Path, stage: str | None):  # -> list[tuple[str, BatchRecord]]
    from neat_data.core.errors import NeatError
    from neat_data.engines.batch_journal import load_records, run_journals

    if not run.is_dir():
        raise NeatError("run folder not found", file=run)
    journals = run_journals(run)
    if stage is not None:
        journals = {name: journal for name, journal in journals.items() if name == stage}
    found = [(name, record) for name, journal in journals.items() for record in load_records(journal)]
    if not found:
        raise NeatError(
            "no batches in this run folder" + (f" for stage {stage}" if stage else "") + " (backends openai-batch, vllm-batch)", file=run
        )
    return found


def _key_lookup(api_key_env: str | None):
    def key_for(record) -> str | None:
        name = api_key_env or record.api_key_env
        register_secret_env(name)
        return os.environ.get(name) if name else None

    return key_for


def _line(stage: str, record, problem: str | None) -> str:
    counts = record.request_counts or {}
    done = f"{counts.get('completed', 0)}/{counts.get('total', record.requests)} done, {counts.get('failed', 0)} failed"
    collected = ", collected" if record.collected else ""
    problem = problem or record.last_error
    return f"{stage:<9} {record.name:<16} {record.batch_id or '-':<24} {record.status:<11} {done}{collected}" + (
        f"  ({problem})" if problem else ""
    )


@batch.command("status")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--stage", help="Only this stage's batches (generate, score).")
@click.option("--api-key-env", help="Environment variable holding the API key (default: the one each batch was submitted with).")
def status(run: Path, stage: str | None, api_key_env: str | None) -> None:
    """Each batch of RUN as its server reports it now."""
    from collections import Counter

    from neat_data.engines.openai_batch import refresh_records

    found = _records(run, stage)
    totals: Counter[str] = Counter()
    for stage_name in dict.fromkeys(name for name, _ in found):
        records = [record for name, record in found if name == stage_name]
        for record, problem in refresh_records(records, api_key_for=_key_lookup(api_key_env)):
            click.echo(_line(stage_name, record, problem))
            totals[record.status] += 1
    click.echo(f"{sum(totals.values())} batches: " + ", ".join(f"{count} {name}" for name, count in sorted(totals.items())))


@batch.command("cancel")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--stage", help="Only this stage's batches (generate, score).")
@click.option("--api-key-env", help="Environment variable holding the API key (default: the one each batch was submitted with).")
def cancel(run: Path, stage: str | None, api_key_env: str | None) -> None:
    """Cancel every unfinished openai-batch batch of RUN (finished requests are kept; re-run the stage to collect)."""
    from neat_data.engines.openai_batch import cancel_records

    found = _records(run, stage)
    tried = 0
    for stage_name in dict.fromkeys(name for name, _ in found):
        records = [record for name, record in found if name == stage_name]
        for record, outcome in cancel_records(records, api_key_for=_key_lookup(api_key_env)):
            click.echo(f"{stage_name:<9} {record.name:<16} {record.batch_id:<24} {outcome}")
            tried += 1
    click.echo(f"{tried} unfinished batches asked to cancel" if tried else "no unfinished batch to cancel")
