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

from neat_data.errors import NeatError, redact_secrets


class NeatGroup(click.Group):
    """Turns NeatError / config validation errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NeatError as error:
            click.echo(f"error: {redact_secrets(error.one_line())}", err=True)
            ctx.exit(2)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "config"
            click.echo(f"error: option '{field}': {redact_secrets(first['msg'])}", err=True)
            ctx.exit(2)


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
@click.option("--system-mode", type=click.Choice(["system", "merged"]), default="system", show_default=True,
              help="How the steering text is sent: as a system message, or merged into the first user turn.")
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
def generate_options(function: Any) -> Any:
    """Options of the generate stage; each maps to a GenerateConfig field of the same name."""
    options = [
        click.option("--prompts", "prompts_source", required=True, help="Prompts: .jsonl/.parquet/.csv or hf://<dataset>[:<config>][@<split>]."),
        click.option("--prompt-column", help="Column holding the prompt (default: messages, prompt or chosen)."),
        click.option("--limit", type=int, help="Use only the first N unique prompts."),
        click.option("--pairs", default="harmless", show_default=True, help="Prompt-pair libraries, comma-separated (names or YAML paths)."),
        click.option("--model", required=True, help="Bundled alias (smollm2-135m-instruct), local HF folder or Hub id; for openai the served name."),
        click.option("--backend", type=click.Choice(["vllm", "openai", "transformers", "ray"]), default="vllm", show_default=True,
                     help="vllm: one engine in this process; openai: any compatible server; transformers: model.generate, no engine "
                          "start (small jobs); ray: vLLM engines in Ray Data actors."),
        click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder."),
        click.option("--round", "round_index", type=int, default=1, show_default=True, help="Round recorded in every row."),
        click.option("--num-pos", type=int, default=2, show_default=True, help="Responses per prompt under the positive system prompt."),
        click.option("--num-neg", type=int, default=2, show_default=True, help="Responses per prompt under the negative system prompt."),
        click.option("--num-neutral", type=int, default=0, show_default=True, help="Responses per prompt with no system prompt."),
        click.option("--temperature", type=float, default=0.8, show_default=True),
        click.option("--top-p", type=float, default=0.95, show_default=True),
        click.option("--max-tokens", type=int, default=256, show_default=True, help="New tokens per response."),
        click.option("--seed", type=int, default=0, show_default=True, help="Run seed; per-request seeds derive from it."),
        click.option("--system-mode", type=click.Choice(["auto", "system", "merged"]), default="auto", show_default=True,
                     help="auto: system role unless the chat template/server rejects it, then merged into the first user turn."),
        click.option("--flush-every", type=int, default=256, show_default=True, help="Write a shard every N rows."),
        click.option("--retry-errors", is_flag=True, help="Also redo rows that ended as errors."),
        click.option("--overwrite", is_flag=True, help="Delete this run's generations and start over."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
        # vLLM
        click.option("--dtype", default="auto", show_default=True, help="vllm: auto = float32 on CPU, bf16/model dtype on CUDA."),
        click.option("--tensor-parallel-size", type=int, default=1, show_default=True, help="vllm: GPUs per model."),
        click.option("--max-model-len", type=int, help="vllm: context length (default: the model's)."),
        click.option("--gpu-memory-utilization", type=float, default=0.9, show_default=True, help="vllm (GPU): share of GPU memory."),
        click.option("--max-num-batched-tokens", type=int, help="vllm: token budget per step (CPU default 16384)."),
        click.option("--max-num-seqs", type=int, help="vllm: sequences per step."),
        click.option("--enforce-eager/--compile", default=None, help="vllm: skip torch.compile (default: eager on CPU, compiled on GPU)."),
        click.option("--kv-cache-gb", type=float, help="vllm (CPU): KV cache size in GiB (default 2)."),
        click.option("--transformers-batch-size", type=int, default=16, show_default=True, help="transformers: sequences per generate call."),
        # Ray Data
        click.option("--ray-actors", type=int, default=1, show_default=True, help="ray: engine actors (one vLLM engine each); RAY_ADDRESS picks the cluster."),
        click.option("--ray-gpus-per-actor", type=float, help="ray: GPUs per actor (default: --tensor-parallel-size on a GPU cluster, else 0)."),
        click.option("--ray-cpus-per-actor", type=float, default=1.0, show_default=True, help="ray: CPUs reserved per actor."),
        click.option("--ray-batch-size", type=int, default=64, show_default=True, help="ray: requests per actor call."),
        # OpenAI-compatible
        click.option("--base-url", help="openai: endpoint, e.g. http://127.0.0.1:8000/v1."),
        click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="openai: environment variable holding the API key."),
        click.option("--max-concurrency", type=int, default=64, show_default=True, help="openai: requests in flight."),
        click.option("--rpm", type=float, help="openai: requests-per-minute limit."),
        click.option("--request-timeout", type=float, default=120.0, show_default=True, help="openai: seconds per attempt."),
        click.option("--max-retries", type=int, default=6, show_default=True, help="openai: retries on 429/5xx/timeouts/bad bodies."),
        click.option("--backoff-base", type=float, default=0.5, show_default=True, help="openai: first retry delay (s), doubling."),
        click.option("--http-transport", type=click.Choice(["aiohttp", "httpx"]), default="aiohttp", show_default=True, help="openai: client transport (httpx costs ~4× more CPU per request at high concurrency)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def shard_options(function: Any) -> Any:
    """--num-shards / --shard-index (generate and score): this process does one hash-slice of the prompts."""
    function = click.option("--shard-index", type=int, help="Which shard this process writes, 0..N-1 (with --num-shards).")(function)
    return click.option("--num-shards", type=int, help="Split the prompts into N shards by a hash of prompt_id; run one process "
                        "per shard (same command, --shard-index 0..N-1), then `neat-data merge`. See docs/SCALING.md.")(function)


@cli.command()
@generate_options
@shard_options
def generate(prompts_source: str, round_index: int, temperature: float, top_p: float, max_tokens: int, seed: int, pairs: str,
             retry_errors: bool, overwrite: bool, no_progress: bool, num_shards: int | None, shard_index: int | None,
             **options: Any) -> None:
    """Sample responses under positive / negative (/ no) steering system prompts into <out>/generations/."""
    from neat_data.engines.base import Sampling
    from neat_data.shards import ShardSpec
    from neat_data.stages.generate import GenerateConfig, run_generate

    config = GenerateConfig(
        prompts=prompts_source, round=round_index, pairs=[p for p in pairs.split(",") if p.strip()],
        sampling=Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed),
        **{k: v for k, v in options.items() if v is not None},
    )
    shard = ShardSpec.from_options(num_shards, shard_index)
    if shard is not None:
        from neat_data.stages.sharded import run_generate_shard

        summary = run_generate_shard(config, shard, retry_errors=retry_errors, overwrite=overwrite, progress=not no_progress, argv=_argv())
        summary.run_dir = summary.run_dir / "generations" / shard.name  # the summary line names the shard's folder
    else:
        summary = run_generate(config, retry_errors=retry_errors, overwrite=overwrite, progress=not no_progress, argv=_argv())
    _print_summary(summary)


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
            if param.is_flag:
                words.append(flag if value or not param.secondary_opts else max(param.secondary_opts, key=len))
            else:
                words += [flag, str(value)]
    return words


def _print_summary(summary: Any) -> None:
    status = summary.counts.get("status", {})
    folder = summary.run_dir if summary.run_dir.parent.name == "generations" else summary.run_dir / "generations"
    click.echo(f"{folder}: {summary.total_rows} rows ({status.get('ok', 0)} ok, {status.get('error', 0)} error; "
               f"{summary.generated_rows} new) by steering {summary.counts.get('steering', {})} in {summary.seconds:.0f} s")
    requests = summary.requests
    if requests.get("attempts"):
        by_reason = ", ".join(f"{reason} {count}" for reason, count in requests["failed_attempts_by_reason"].items()) or "none"
        errors = ", ".join(f"{reason} {count}" for reason, count in requests["error_rows_by_reason"].items()) or "none"
        click.echo(f"requests: {requests['attempts']} attempts, {requests['retries']} retries; failed attempts by reason: {by_reason}; "
                   f"gave up on {requests['given_up']}; error rows by reason: {errors}")
    if summary.stale_rows:
        click.echo(f"note: {summary.stale_rows} rows in the folder are not planned by this config (smaller --limit or edited pair "
                   "text); they are kept — use --overwrite for a folder with only this config's rows", err=True)


# ------------------------------------------------------------------------------------ score, rank, export
@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--scorer", default="self-contrast", show_default=True, help="self-contrast | reward-model | judge | python:<module>:<function>.")
@click.option("--model", help="Reward model, or the self-contrast reference (default: the model that generated the run).")
@click.option("--negative-score", type=click.Choice(["scored", "floor"]), default="scored", show_default=True,
              help="floor: every negative-prompt response ranks below every other one (a constant score).")
@click.option("--backend", type=click.Choice(["transformers", "vllm"]), default="transformers", show_default=True,
              help="reward-model: vllm = the pooling fast path (LLM.classify).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Sequences per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--max-length", type=int, help="Longest sequence scored; longer → error row.")
@click.option("--judge-mode", type=click.Choice(["pointwise", "pairwise"]), default="pointwise", show_default=True,
              help="judge: 1–10 rating per response, or pairwise win rate with both orders judged.")
@click.option("--judge-backend", type=click.Choice(["openai", "vllm"]), default="openai", show_default=True, help="judge: engine.")
@click.option("--judge-template", help="judge: template YAML (default prompts/judges/<mode>.yaml).")
@click.option("--base-url", help="judge (openai): endpoint, e.g. http://127.0.0.1:8000/v1.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="judge (openai): environment variable with the key.")
@click.option("--max-concurrency", type=int, default=64, show_default=True, help="judge (openai): requests in flight.")
@click.option("--ray-actors", type=int, help="Score on N Ray actors, each with its own copy of the scorer; RAY_ADDRESS picks the cluster.")
@click.option("--ray-gpus-per-actor", type=float, help="ray: GPUs per actor (default 1 on a GPU cluster, else 0).")
@click.option("--ray-batch-size", type=int, default=64, show_default=True, help="ray: items per actor call.")
@click.option("--flush-every", type=int, default=256, show_default=True, help="Write a shard every N rows (a kill loses at most these).")
@click.option("--overwrite", is_flag=True, help="Rescore everything.")
@click.option("--no-progress", is_flag=True)
@shard_options
def score(run: Path, overwrite: bool, no_progress: bool, num_shards: int | None, shard_index: int | None, **options: Any) -> None:
    """Score every response of RUN as an answer to the neutral prompt → RUN/scored/."""
    from neat_data.shards import ShardSpec
    from neat_data.stages.score import ScoreConfig, run_score

    config = ScoreConfig(run=run, **{k: v for k, v in options.items() if v is not None})
    shard = ShardSpec.from_options(num_shards, shard_index)
    if shard is not None:
        from neat_data.stages.sharded import run_score_shard

        summary = run_score_shard(config, shard, overwrite=overwrite, progress=not no_progress, argv=_argv())
    else:
        summary = run_score(config, overwrite=overwrite, progress=not no_progress, argv=_argv())
    where = f"{run}/scored" + (f"/{shard.name}" if shard else "")
    click.echo(f"{where}: {summary.rows} rows ({summary.scored_rows} newly scored) {summary.counts['score_status']} "
               f"in {summary.seconds:.0f} s")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--stage", "stages", type=click.Choice(["generate", "score"]), multiple=True,
              help="Merge only this stage (repeatable; default: every stage run with --num-shards).")
def merge(run: Path, stages: tuple[str, ...]) -> None:
    """Check that every shard of RUN finished and keys are unique, then fold the shards into one table."""
    from neat_data.stages.merge import run_merge

    for result in run_merge(run, list(stages) or None):
        click.echo(result.line(run))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--pairs", type=click.Choice(["best-vs-worst", "pos-vs-neg", "all-pairs"]), default="best-vs-worst", show_default=True)
@click.option("--pos-vs-neg-by", type=click.Choice(["construction", "score"]), default="construction", show_default=True,
              help="pos-vs-neg: the positive response is chosen (RLCD), or the higher score.")
@click.option("--min-margin", type=float, default=0.0, show_default=True, help="Drop score-labelled pairs with a smaller score gap.")
def rank(run: Path, **options: Any) -> None:
    """Ranked lists per prompt and preference pairs → RUN/ranked/{lists,pairs}.parquet."""
    from neat_data.stages.rank import RankConfig, run_rank

    summary = run_rank(RankConfig(run=run, **options), argv=_argv())
    for line in summary.lines():
        click.echo(line)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["trl", "trl-implicit", "kto", "ranked", "h4"]), default="trl", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default RUN/export/FORMAT).")
@click.option("--split", default="train", show_default=True, help="Split name.")
@click.option("--kto-label", type=click.Choice(["steering", "score"]), default="steering", show_default=True)
@click.option("--kto-threshold", type=float, help="kto by score: score >= threshold is desirable.")
def export(run: Path, fmt: str, **options: Any) -> None:
    """Write a trainer-ready dataset (Parquet + datasets folder)."""
    from neat_data.stages.export import ExportConfig, run_export

    out, rows = run_export(ExportConfig(run=run, format=fmt, **{k: v for k, v in options.items() if v is not None}), argv=_argv())
    click.echo(f"{rows} rows → {out}/{options['split']}.parquet and {out}/hf (datasets.load_from_disk)")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
def report(run: Path) -> None:
    """PNG plots (scores by steering, pair score gaps) and a text table → RUN/report/."""
    from neat_data.stages.report import run_report

    lines, written = run_report(run)
    for line in lines:
        click.echo(line)
    click.echo("wrote " + ", ".join(str(p) for p in written))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--repo-id", required=True, help="Dataset repo on the Hub, e.g. me/neat-hh.")
@click.option("--config-name", default="default", show_default=True, help="Dataset config (e.g. one per round: round_1).")
@click.option("--format", "fmt", type=click.Choice(["trl", "trl-implicit", "kto", "ranked", "h4"]), default="h4", show_default=True,
              help="Which export of RUN to push.")
@click.option("--public", is_flag=True, help="Create the repo public (default: private).")
@click.option("--token-env", default="HF_TOKEN", show_default=True, help="Environment variable holding the Hub token.")
@click.option("--max-retries", type=int, default=5, show_default=True, help="Retries on 429 / 412 / 409 / 5xx.")
@click.option("--backoff-base", type=float, default=2.0, show_default=True, help="First retry delay (s), doubling.")
def push(run: Path, fmt: str, **options: Any) -> None:
    """Push an export of RUN to a Hub dataset repo, with a merged dataset card."""
    from neat_data.stages.push import PushConfig, run_push

    entry = run_push(PushConfig(run=run, format=fmt, **options), argv=_argv())
    click.echo(f"pushed {entry['splits']} to {options['repo_id']} (config {options['config_name']}, "
               f"{'public' if options['public'] else 'private'})")


# -------------------------------------------------------- train, evaluate, run (rounds), quickstart, stage
from neat_data.cli_rounds import register  # noqa: E402  (the commands live there; this module stays the entry point)

register(cli, lambda: _argv())
from neat_data.cli_audit import audit  # noqa: E402  (`neat-data prompts audit`: neat_data/safety/audit.py)

prompts.add_command(audit)


def main() -> None:
    cli(prog_name="neat-data")


if __name__ == "__main__":
    main()
