"""Token and cost accounting: what a run's requests consumed, by stage and steering, and what it cost.

In:  one `UsageRecord` per request (stage, steering, billed prompt and completion tokens — `request_usage` reads
     them from any backend's RequestResult), prices in currency units per 1M tokens, a discount.
Out: `token_costs(...)` → a JSON-able dict for the manifest and the CLI summary:
     {"by_stage": {stage: {steering: Totals}}, "total": Totals, "prices": {...} | None}
     Totals = {"requests", "prompt_tokens", "completion_tokens", "requests_without_usage"[, "list_cost", "cost"]}.

With P prompt and C completion tokens, prices p_in and p_out per 1M tokens and discount d (0.5: the OpenAI Batch
API's half price):
    list_cost = (P · p_in + C · p_out) / 1,000,000        cost = list_cost · (1 − d)
A request whose backend reported no usage counts in `requests_without_usage` and adds no tokens (so a cost is a
lower bound when that count is not 0). A request's prompt is billed once per call: once for a request with n
samples, n times when the server ignored n and each sample was a separate call (the online backend's fallback).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neat_data.engines.base import RequestResult


def batch_discount(backend: str) -> float:
    """The discount a backend's requests get on list prices (its entry's; 0 for online backends)."""
    from neat_data.engines import BACKENDS

    return BACKENDS[backend].discount


class PriceOptions(BaseModel):
    """Prices for the cost line (a generate or score config inherits them: --price-in / --price-out)."""

    model_config = ConfigDict(extra="forbid")

    # at most 1e9 per 1M tokens: a cost stays finite for any token count (an infinite spend is written as null and
    # a resumed --max-cost would count from 0)
    price_in: float | None = Field(
        None, ge=0, le=1e9, allow_inf_nan=False, description="Price per 1M prompt tokens (with --price-out: the run's cost is reported)."
    )
    price_out: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False, description="Price per 1M completion tokens.")


@dataclass(frozen=True)
class UsageRecord:
    stage: str  # generate | score
    steering: str  # pos | neg | none (score: the steering of the scored row, or "judge")
    prompt_tokens: int | None
    completion_tokens: int | None


def request_usage(result: RequestResult) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens billed for one request: the backend's own usage when it reported it
    (RequestResult.prompt_tokens / completion_tokens), else from its completions — the prompt once, the
    completions summed (None when any completion's count is unknown)."""
    if result.prompt_tokens is not None or result.completion_tokens is not None:
        return result.prompt_tokens, result.completion_tokens
    if not result.completions:
        return None, None
    prompt = result.completions[0].prompt_tokens
    counts = [c.completion_tokens for c in result.completions]
    return prompt, (sum(counts) if all(isinstance(c, int) for c in counts) else None)  # type: ignore[arg-type]


def _empty() -> dict[str, int]:
    return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "requests_without_usage": 0}


def _add(totals: dict[str, int], record: UsageRecord) -> None:
    totals["requests"] += 1
    if record.prompt_tokens is None and record.completion_tokens is None:
        totals["requests_without_usage"] += 1
    totals["prompt_tokens"] += record.prompt_tokens or 0
    totals["completion_tokens"] += record.completion_tokens or 0


def list_cost(prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float) -> float:
    """Cost at list prices (USD per 1M tokens), before any batch discount: the one price formula."""
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000


def _price(totals: dict[str, Any], price_in: float, price_out: float, discount: float) -> None:
    at_list_prices = list_cost(totals["prompt_tokens"], totals["completion_tokens"], price_in, price_out)
    totals["list_cost"] = round(at_list_prices, 6)
    totals["cost"] = round(at_list_prices * (1.0 - discount), 6)


class UsageTally:
    """Running totals by stage and steering, a request at a time: what `token_costs` reports, in memory that does not
    grow with the number of requests (a million-prompt generate keeps no per-request record)."""

    def __init__(self) -> None:
        self.by_stage: dict[str, dict[str, dict[str, Any]]] = {}
        self.total: dict[str, Any] = _empty()

    def add(self, record: UsageRecord) -> None:
        _add(self.by_stage.setdefault(record.stage, {}).setdefault(record.steering, _empty()), record)
        _add(self.total, record)

    def costs(self, *, price_in: float | None = None, price_out: float | None = None, discount: float = 0.0) -> dict[str, Any]:
        """Totals by stage and steering and overall; with both prices, the list cost and the discounted cost of each.
        `discount` in [0, 1) (e.g. `batch_discount("openai-batch")`); ValueError outside it or for a negative price."""
        if not 0.0 <= discount < 1.0:
            raise ValueError(f"discount must be in [0, 1), got {discount}")
        if (price_in is None) != (price_out is None):
            raise ValueError("give both prices (per 1M prompt tokens and per 1M completion tokens) or neither")
        if price_in is not None and price_out is not None and (price_in < 0 or price_out < 0):
            raise ValueError("prices must not be negative")
        by_stage = {stage: {steering: dict(totals) for steering, totals in steerings.items()} for stage, steerings in self.by_stage.items()}
        total = dict(self.total)
        prices = None
        if price_in is not None and price_out is not None:
            prices = {"price_in_per_1m": price_in, "price_out_per_1m": price_out, "discount": discount}
            for steerings in by_stage.values():
                for totals in steerings.values():
                    _price(totals, price_in, price_out, discount)
            _price(total, price_in, price_out, discount)
        return {"by_stage": by_stage, "total": total, "prices": prices}


def token_costs(
    records: Iterable[UsageRecord], *, price_in: float | None = None, price_out: float | None = None, discount: float = 0.0
) -> dict[str, Any]:
    """`UsageTally.costs` over `records`."""
    tally = UsageTally()
    for record in records:
        tally.add(record)
    return tally.costs(price_in=price_in, price_out=price_out, discount=discount)


def cost_line(summary: dict[str, Any]) -> str:
    """One line for the CLI: "tokens: 1,200 prompt + 800 completion in 10 requests; cost 0.0011 (list 0.0022, batch
    discount 50%)"."""
    total = summary["total"]
    line = f"tokens: {total['prompt_tokens']:,} prompt + {total['completion_tokens']:,} completion in {total['requests']:,} requests"
    if total["requests_without_usage"]:
        line += f" ({total['requests_without_usage']:,} without usage)"
    prices = summary.get("prices")
    if prices:
        discount = f", batch discount {prices['discount']:.0%}" if prices["discount"] else ""
        line += f"; cost {total['cost']:.4f} (list {total['list_cost']:.4f}{discount})"
    return line


class BudgetOptions(BaseModel):
    """Caps on what a generate run may spend (a generate config inherits them: --max-cost / --max-total-tokens). They
    count the whole run folder: what earlier invocations spent (the manifest's `budget.spent_*`, written before each
    shard, so a killed run keeps it) plus this one. A cap that cannot be counted is refused: with a batch backend up
    front, and at the first answer that carries no usage."""

    model_config = ConfigDict(extra="forbid")

    max_cost: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Stop sending requests once the run's cost (needs --price-in/--price-out) reaches this; in-flight ones "
        "finish and are kept; the same command with a higher cap continues where it stopped.",
    )
    max_total_tokens: int | None = Field(None, ge=1, description="The same cap in billed prompt + completion tokens.")


@dataclass
class Budget:
    """A run's spending against its caps, updated one answered request at a time. `reached()` is asked before each new
    request is handed to the backend: requests already in flight are answered and recorded, so the spend can pass the
    cap by what was in flight (at most the backend's concurrency × one request), never by a request sent after."""

    max_cost: float | None
    max_tokens: int | None
    price_in: float | None = None
    price_out: float | None = None
    discount: float = 0.0
    tokens: int = 0  # billed prompt + completion tokens, earlier invocations included
    cost: float = 0.0
    unsent: int = 0  # requests left unsent because a cap was reached
    uncounted: int = 0  # answered requests that reported no usage (any pass): a cap cannot be counted, nothing more is sent
    unpriced: tuple[int, int] = (0, 0)  # (prompt, completion) tokens billed by passes without prices: priced by the next that has them

    @classmethod
    def for_run(cls, caps: BudgetOptions, prices: PriceOptions, discount: float, previous: dict[str, Any] | None) -> Budget:
        spent = previous or {}
        budget = cls(
            max_cost=caps.max_cost,
            max_tokens=caps.max_total_tokens,
            price_in=prices.price_in,
            price_out=prices.price_out,
            discount=discount,
            tokens=int(spent.get("spent_tokens") or 0),
            cost=float(spent.get("spent_cost") or 0.0),
            uncounted=int(spent.get("uncounted_requests") or 0),
        )
        budget._charge(*(int(n) for n in spent.get("unpriced_tokens") or (0, 0)))  # in spent_tokens already, not in its cost
        return budget

    @property
    def capped(self) -> bool:
        return self.max_cost is not None or self.max_tokens is not None

    def add(self, prompt_tokens: int | None, completion_tokens: int | None, *, answered: bool = True) -> None:
        """Count one request's billed tokens; `answered`: it returned completions (a failed request may bill nothing)."""
        if answered and (prompt_tokens is None or completion_tokens is None):
            self.uncounted += 1
        prompt, completion = prompt_tokens or 0, completion_tokens or 0
        self.tokens += prompt + completion
        self._charge(prompt, completion)

    def _charge(self, prompt: int, completion: int) -> None:
        """The cost of billed tokens at this pass's prices; without prices they wait for a pass that has them (a
        --max-cost resume of a run spent unpriced counts that spend)."""
        if self.price_in is None or self.price_out is None:
            self.unpriced = (self.unpriced[0] + prompt, self.unpriced[1] + completion)
        else:
            self.cost += list_cost(prompt, completion, self.price_in, self.price_out) * (1.0 - self.discount)

    def reached(self) -> bool:
        if self.capped and self.uncounted:
            return True
        return (self.max_cost is not None and self.cost >= self.max_cost) or (
            self.max_tokens is not None and self.tokens >= self.max_tokens
        )

    def record(self) -> dict[str, Any]:
        return {
            "max_cost": self.max_cost,
            "max_total_tokens": self.max_tokens,
            "spent_tokens": self.tokens,
            "spent_cost": round(self.cost, 6),
            "stopped": self.unsent > 0,
            "unsent_requests": self.unsent,
            "uncounted_requests": self.uncounted,
            "unpriced_tokens": list(self.unpriced),
        }

    def uncountable(self) -> str | None:
        """Why the caps could not be counted (the server answered without usage), or None."""
        if not (self.capped and self.uncounted):
            return None
        caps = " / ".join(name for name, cap in (("--max-cost", self.max_cost), ("--max-total-tokens", self.max_tokens)) if cap is not None)
        return (
            f"{caps} cannot be counted: the server answered {self.uncounted:,} request{'s' * (self.uncounted != 1)} without token usage; stopped there "
            f"({self.unsent:,} requests not sent, the answered rows are kept); run without the cap"
        )

    def line(self) -> str | None:
        if not self.unsent:
            return None
        return f"stopped at the budget {self._spent()}: {self.unsent:,} requests not sent; the same command with a higher cap continues"

    def standing(self) -> str | None:
        """The caps against what the folder has spent, before a pass sends anything (the dry run's line)."""
        if not self.capped:
            return None
        if self.uncounted:
            return (
                f"budget: {self._spent()}: cannot be counted (the server answered {self.uncounted:,} request{'s' * (self.uncounted != 1)} without token "
                "usage): the run sends nothing; run without the cap"
            )
        if self.reached():
            return f"budget: {self._spent()}: reached already, the run sends nothing; a higher cap continues"
        return f"budget: {self._spent()}: the run stops sending once it is reached"

    def _spent(self) -> str:
        return " / ".join(
            part
            for part in (
                f"--max-cost {self.max_cost:g} (spent {self.cost:.4f})" if self.max_cost is not None else "",
                f"--max-total-tokens {self.max_tokens:,} (spent {self.tokens:,})" if self.max_tokens is not None else "",
            )
            if part
        )


CHARS_PER_TOKEN = 4.0  # the estimate when no tokenizer is at hand (English text; said as an estimate wherever shown)


def estimate_prompt_tokens(conversations: Iterable[list[dict[str, str]]], tokenizer: Any | None = None) -> tuple[int, str]:
    """(prompt tokens of the conversations as the chat template renders them, how they were counted): with the model's
    tokenizer, the tokens of the rendered template text (`apply_chat_template(..., tokenize=False,
    add_generation_prompt=True)`, then the tokenizer without special tokens added — what vLLM and the transformers
    backend send); without, an estimate of (characters + 16 per message for the template's role markers) / 4."""
    total = 0
    if tokenizer is not None:
        for messages in conversations:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return total, "the model's tokenizer and chat template"
    for messages in conversations:
        total += sum(len(m.get("content") or "") + 16 for m in messages)
    return int(round(total / CHARS_PER_TOKEN)), f"an estimate (~{CHARS_PER_TOKEN:g} characters per token, no tokenizer at hand)"
