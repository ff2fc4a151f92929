"""Token and cost accounting (neat_data.engines.costs) on hand-computed numbers."""

from __future__ import annotations

import pytest

from neat_data.engines.base import Completion, RequestResult
from neat_data.engines.costs import UsageRecord, batch_discount, cost_line, request_usage, token_costs


def test_totals_by_stage_and_steering_and_the_discounted_cost():
    records = [
        UsageRecord("generate", "pos", 100, 40),
        UsageRecord("generate", "pos", 120, 60),
        UsageRecord("generate", "neg", 100, 50),
        UsageRecord("score", "judge", 300, 5),
        UsageRecord("generate", "neg", None, None),
    ]
    summary = token_costs(records, price_in=2.0, price_out=8.0, discount=batch_discount("openai-batch"))
    pos = summary["by_stage"]["generate"]["pos"]
    # pos: P = 220, C = 100 → list = (220·2 + 100·8) / 1e6 = 0.00124; half price → 0.00062
    assert (pos["requests"], pos["prompt_tokens"], pos["completion_tokens"]) == (2, 220, 100)
    assert pos["list_cost"] == pytest.approx(0.00124) and pos["cost"] == pytest.approx(0.00062)
    neg = summary["by_stage"]["generate"]["neg"]
    assert neg["requests"] == 2 and neg["requests_without_usage"] == 1 and neg["prompt_tokens"] == 100
    total = summary["total"]
    # all: P = 620, C = 155 → list = (620·2 + 155·8) / 1e6 = 0.00248; cost 0.00124
    assert (total["requests"], total["prompt_tokens"], total["completion_tokens"]) == (5, 620, 155)
    assert total["list_cost"] == pytest.approx(0.00248) and total["cost"] == pytest.approx(0.00124)
    assert summary["prices"] == {"price_in_per_1m": 2.0, "price_out_per_1m": 8.0, "discount": 0.5}
    assert cost_line(summary) == (
        "tokens: 620 prompt + 155 completion in 5 requests (1 without usage); cost 0.0012 (list 0.0025, batch discount 50%)"
    )


def test_without_prices_only_tokens_and_bad_prices_are_refused():
    summary = token_costs([UsageRecord("generate", "none", 7, 3)])
    assert summary["prices"] is None and "cost" not in summary["total"] and summary["total"]["prompt_tokens"] == 7
    assert batch_discount("openai") == 0.0 and batch_discount("vllm-batch") == 0.0
    for bad in (dict(price_in=1.0), dict(price_in=-1.0, price_out=1.0), dict(price_in=1.0, price_out=1.0, discount=1.0)):
        with pytest.raises(ValueError):
            token_costs([], **bad)


def test_request_usage_prefers_the_backend_usage_and_counts_the_prompt_once():
    completions = [Completion("a", "stop", 10, 4), Completion("b", "stop", 10, 6)]
    assert request_usage(RequestResult(completions=completions)) == (10, 10)  # vLLM: per-sample counts, one prompt
    assert request_usage(RequestResult(completions=completions, prompt_tokens=30, completion_tokens=10)) == (30, 10)  # 3 calls billed
    partial = [Completion("a", "stop", 10, None), Completion("b", "stop", 10, None)]  # a server's n > 1 answer
    assert request_usage(RequestResult(completions=partial)) == (10, None)
    assert request_usage(RequestResult(error="HTTP 500")) == (None, None)
