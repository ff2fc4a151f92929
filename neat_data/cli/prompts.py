"""`neat-data prompts list | show | audit`: the prompt-pair libraries, what the engine sees for one prompt, and which
steering pairs separate responses on *your* model.

    neat-data prompts audit harmless --model smollm2-135m-instruct
    neat-data prompts audit my_pairs.yaml --model Qwen/Qwen2.5-0.5B-Instruct --prompts my_prompts.jsonl --suite harmbench --harmful 16

`audit` prints one row per pair (refusal on harmful and benign prompts under its positive / negative system prompt, the
paired difference, P(offensive), VADER tone, words, self-contrast gap) and writes every number (with 95% intervals)
to a JSON file and every response to a JSONL beside it. Logic: `neat_data.stages.prompts_audit`.
"""

from __future__ import annotations

import json
from typing import Any

import click

from neat_data.cli.main import cli
from neat_data.cli.options import build_config, config_options
from neat_data.stages.prompts_audit import AuditConfig


@cli.group()
def prompts() -> None:
    """Prompt-pair libraries: positive / negative steering system prompts."""


@prompts.command("list")
def prompts_list() -> None:
    """List the bundled prompt-pair libraries."""
    from neat_data.core.pairs import bundled_library_paths, load_library

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
    from neat_data.core.keys import prompt_id as make_prompt_id
    from neat_data.core.keys import text_hash
    from neat_data.core.messages import build_messages
    from neat_data.core.pairs import choose_pair, load_libraries

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
    tokenizer = _load_tokenizer(model) if model else None  # before any output: a bad model is the one line printed
    click.echo(f"prompt_id {pid}  pair {pair.id} (library {pair.library})")
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

    from neat_data.core.messages import require_chat_template
    from neat_data.core.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    require_chat_template(tokenizer, model)
    return tokenizer


@prompts.command("audit")
@click.argument("library")
@config_options(AuditConfig, skip=("library",))
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def audit(library: str, no_progress: bool, **options: Any) -> None:
    """Sample each pair of LIBRARY on harmful and benign prompts and print the contrast it produces.

    Refusal (HarmBench's AdvBench refusal prefixes), P(offensive) and VADER tone measure refusal wording,
    offensiveness and tone — not helpfulness."""
    from neat_data.stages.prompts_audit import audit_table, run_audit, write_audit

    config = build_config(AuditConfig, options, library=library)
    summary, rows = run_audit(config, echo=lambda line: click.echo(line, err=True), progress=not no_progress)
    out, responses = write_audit(config, summary, rows)
    click.echo("\n".join(audit_table(summary)))
    click.echo(
        f"\n{summary['responses']} responses ({summary['error_responses']} failed) in {summary['seconds']['total']:.0f} s; "
        f"harmful prompts from {summary['harmful_source']}, benign from {summary['prompts']}.\n"
        "refusal = HarmBench's AdvBench refusal-prefix match; P(offensive) = alt-profanity-check; tone = VADER compound: "
        "refusal wording, offensiveness and tone, not helpfulness. Self-contrast gap = mean s(y|pos) − s(y|neg) of the "
        "pair's own responses under the model (the training scorer).\n"
        f"numbers: {out}   responses: {responses}"
    )
