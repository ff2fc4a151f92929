"""Cost before spending: `neat-data generate … --dry-run` — what the command would send, and what it would cost.

In:  a generate config (and the run folder, read only, when it exists: rows already done are not planned again).
Out: a `DryRun` (printed): prompts, requests and rows to generate, the prompt tokens of those requests — counted with
     the model's own tokenizer and chat template when its folder is on this machine, else estimated (~4 characters a
     token, said so) — the completion-token ceiling (rows × max_tokens) and, with --price-in/--price-out, the cost:
     prompt cost + at most the ceiling's cost (less the batch discount). Writes nothing, starts no engine, sends nothing.
A run that is then started with --max-cost / --max-total-tokens stops at its cap (costs.Budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neat_data.core import layout
from neat_data.core.shards import ShardSpec
from neat_data.engines.costs import batch_discount, estimate_prompt_tokens, list_cost
from neat_data.stages.generate.plan import GenerateConfig, to_engine_request
from neat_data.stages.generate.stage import _Existing, earlier_passes, existing_rows, pending_requests, plan_pass

TOKENIZED_AT_MOST = 20_000  # requests tokenised exactly; beyond, the tokens per character of these scale the rest


@dataclass
class DryRun:
    model: str
    backend: str
    prompts: int
    requests: int
    rows: int
    done_rows: int
    prompt_tokens: int
    counted_with: str
    max_completion_tokens: int
    cost: dict[str, float] | None
    budget: str | None = None  # the caps against what the folder has spent (Budget.standing)
    dataset_rows: int = 0  # rows of the prompts file's own answers (--responses keep): written, never sent

    def lines(self) -> list[str]:
        lines = [
            f"dry run (nothing written, nothing sent): {self.requests:,} requests → {self.rows:,} rows for {self.prompts:,} prompts "
            f"on {self.model} ({self.backend}){f'; {self.done_rows:,} rows already done' if self.done_rows else ''}"
            f"{f'; and {self.dataset_rows:,} rows from the dataset (no request)' if self.dataset_rows else ''}",
            f"prompt tokens: {self.prompt_tokens:,} (counted with {self.counted_with}); completion tokens: at most "
            f"{self.max_completion_tokens:,} (rows × max_tokens)",
        ]
        if self.cost is not None:
            discount = f", after the batch discount of {self.cost['discount']:.0%}" if self.cost["discount"] else ""
            lines.append(
                f"cost: {self.cost['prompt']:.4f} for the prompts + at most {self.cost['completion_max']:.4f} for the completions "
                f"= at most {self.cost['total_max']:.4f}{discount}"
            )
        else:
            lines.append("cost: give --price-in and --price-out (per 1M tokens) to see it")
        return [*lines, *([self.budget] if self.budget else [])]


def _tokenizer(config: GenerateConfig) -> Any | None:
    """The model's tokenizer when its folder is already on this machine (nothing is downloaded or built)."""
    from neat_data.stages.provenance import local_model_folder

    folder = local_model_folder(config.model)
    if folder is None:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    except Exception:  # no tokenizer files, or transformers missing: the estimate says so
        return None


def dry_run_generate(
    config: GenerateConfig, *, shard: ShardSpec | None = None, retry_errors: bool = False, overwrite: bool = False
) -> DryRun:
    """What the same command would send: planned by the run's own code (`plan_pass`: its checks, the folder's identity,
    the --redo keys; `existing_rows` and `pending_requests`: what is done and what is sent), without writing or sending."""
    send = config
    config, libraries, plan = plan_pass(send, shard, retry_errors, overwrite)
    folder = layout.GENERATIONS.path(config.out)
    existing = existing_rows(layout.GENERATIONS.rows(config.out), config, send, overwrite) if folder.is_dir() else _Existing()
    requests = rows = characters = sampled_characters = 0
    sampled: list[list[dict[str, str]]] = []
    for planned in pending_requests(config, libraries, existing, retry_errors, shard):
        messages = to_engine_request(planned, send).messages
        requests += 1
        rows += sum(not existing.done(key, retry_errors) for key in planned.keys)
        size = sum(len(m.get("content") or "") + 16 for m in messages)
        characters += size
        if len(sampled) < TOKENIZED_AT_MOST:
            sampled.append(messages)
            sampled_characters += size
    done = plan.owned * sum((config.num_pos, config.num_neg, config.num_neutral)) - rows
    counted, method = estimate_prompt_tokens(sampled, _tokenizer(config))
    prompt_tokens = counted if requests <= TOKENIZED_AT_MOST or not sampled_characters else round(counted * characters / sampled_characters)
    if requests > TOKENIZED_AT_MOST:
        method += f", on the first {TOKENIZED_AT_MOST:,} requests, scaled by characters to all"
    ceiling = rows * send.sampling.max_tokens  # a --redo pass sends with this command's sampling
    cost = None
    if config.price_in is not None and config.price_out is not None:
        discount = batch_discount(config.backend)
        prompt_cost = list_cost(prompt_tokens, 0, config.price_in, config.price_out) * (1 - discount)
        completion_cost = list_cost(0, ceiling, config.price_in, config.price_out) * (1 - discount)
        cost = {"prompt": prompt_cost, "completion_max": completion_cost, "total_max": prompt_cost + completion_cost, "discount": discount}
    return DryRun(
        model=config.model,
        backend=config.backend,
        prompts=plan.owned,
        requests=requests,
        rows=rows,
        done_rows=done,
        prompt_tokens=prompt_tokens,
        counted_with=method,
        max_completion_tokens=ceiling,
        cost=cost,
        budget=earlier_passes(config, Path(config.out), overwrite)[0].standing(),
        dataset_rows=plan.dataset_rows,
    )
