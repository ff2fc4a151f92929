"""Training losses on hand-computed cases: values, gradient signs, masks; DPO pairs; losses by name."""

from __future__ import annotations

import math

import pytest
import torch

from neat_data.train.loss import (
    LOSSES,
    LossInputs,
    LossSettings,
    best_vs_worst_pairs,
    dpo_accuracy,
    dpo_loss,
    neat_loss,
    pos_vs_neg_pairs,
    pro_loss,
    ranking_accuracy,
    rrhf_loss,
    sequence_scores,
    sft_loss,
)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_sequence_scores_average_response_tokens_only():
    # per-token log-probs [-1, -2, -3] and [-0.5] (the trainer hands over their sums and counts)
    assert sequence_scores(t([-6.0, -0.5]), torch.tensor([3, 1])).tolist() == [-2.0, -0.5]
    assert sequence_scores(t([[-6.0, 0.0]]), t([[3, 0]])).tolist() == [[-2.0, 0.0]]  # [B, C] slots; empty slot: 0, not NaN
    assert sequence_scores(t([0.0]), t([0])).tolist() == [0.0]  # nothing to average: 0, not NaN


def test_rrhf_hand_computed():
    # rewards 3 > 2 > 1; scores in the wrong order for (best, middle) only.
    scores, rewards, mask = t([[-1.0, -0.5, -3.0]]), t([[3.0, 2.0, 1.0]]), t([[1, 1, 1]])
    # pairs (i worse, j better): (1,0): max(0, -0.5+1)=0.5; (2,0): max(0,-3+1)=0; (2,1): max(0,-3+0.5)=0
    assert rrhf_loss(scores, rewards, mask).item() == pytest.approx(0.5)


def test_rrhf_perfectly_ordered_reversed_and_equal():
    rewards, mask = t([[3.0, 2.0, 1.0]]), t([[1, 1, 1]])
    assert rrhf_loss(t([[-1.0, -2.0, -3.0]]), rewards, mask).item() == 0.0
    # reversed: (1,0): 1, (2,0): 2, (2,1): 1
    assert rrhf_loss(t([[-3.0, -2.0, -1.0]]), rewards, mask).item() == pytest.approx(4.0)
    # equal rewards: no pair, no loss, whatever the scores
    assert rrhf_loss(t([[-3.0, -2.0, -1.0]]), t([[1.0, 1.0, 1.0]]), mask).item() == 0.0


def test_rrhf_gradient_pushes_better_up_and_worse_down():
    scores = t([[-2.0, -1.0]]).requires_grad_()
    rrhf_loss(scores, t([[1.0, 0.0]]), t([[1, 1]])).backward()
    assert scores.grad.tolist() == [[-1.0, 1.0]]  # descent raises p_best, lowers p_worse


def test_padded_candidate_contributes_nothing():
    rewards = t([[3.0, 1.0, 100.0]])
    scores = t([[-1.0, -2.0, 50.0]]).requires_grad_()
    mask = t([[1, 1, 0]])
    total, parts = neat_loss(scores, rewards, mask, rank_loss="rrhf")
    total.backward()
    assert scores.grad[0, 2].item() == 0.0
    assert parts["sft_loss"] == pytest.approx(1.0)  # best real candidate is slot 0, not the padded 100
    for fn in (rrhf_loss, pro_loss, sft_loss):
        assert fn(scores.detach(), rewards, mask).item() == pytest.approx(fn(t([[-1.0, -2.0]]), t([[3.0, 1.0]]), t([[1, 1]])).item())


def test_batch_mean_over_prompts_with_fewer_candidates():
    scores = t([[-3.0, -1.0, 0.0], [-2.0, -1.0, 0.0]])
    rewards = t([[2.0, 1.0, 0.0], [5.0, 1.0, 0.0]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    # prompt 0: pair (1,0): max(0, -1+3) = 2. prompt 1: (1,0): 1, (2,0): 2, (2,1): 1 → 4. mean = 3
    assert rrhf_loss(scores, rewards, mask).item() == pytest.approx(3.0)


def test_pro_two_candidates_is_a_softmax():
    p, r = t([[-1.0, -2.0]]), t([[0.75, 0.25]])
    tau = 0.5
    expected = -torch.log_softmax(t([-1.0 * tau, -2.0 * tau]), dim=0)[0].item()
    assert pro_loss(p, r, t([[1, 1]])).item() == pytest.approx(expected)
    # candidates given worst first give the same loss (PRO orders by reward itself)
    assert pro_loss(t([[-2.0, -1.0]]), t([[0.25, 0.75]]), t([[1, 1]])).item() == pytest.approx(expected)


def test_pro_three_candidates_hand_computed():
    p, r = t([[-1.0, -2.0, -4.0]]), t([[3.0, 2.0, 0.0]])
    # k=1: τ = [max(1,3)=3, 1, 3] over i=1,2,3 → logits [-3, -2, -12], term −log softmax[0]
    # k=2: τ_2^3 = 2, τ_2^2 = 2 → logits [-4, -8]
    k1 = -(-3.0 - math.log(math.exp(-3) + math.exp(-2) + math.exp(-12)))
    k2 = -(-4.0 - math.log(math.exp(-4) + math.exp(-8)))
    assert pro_loss(p, r, t([[1, 1, 1]])).item() == pytest.approx(k1 + k2)


def test_pro_gradient_sign_and_padding():
    scores = t([[-1.0, -1.0, 7.0]]).requires_grad_()
    pro_loss(scores, t([[1.0, 0.0, 9.0]]), t([[1, 1, 0]])).backward()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 1] and scores.grad[0, 2] == 0


def test_sft_and_weighted_sum_and_accuracy():
    scores, rewards, mask = t([[-1.5, -0.5]]), t([[2.0, 1.0]]), t([[1, 1]])
    assert sft_loss(scores, rewards, mask).item() == pytest.approx(1.5)
    total, parts = neat_loss(scores, rewards, mask, rank_loss="rrhf", rank_weight=2.0, sft_weight=0.5)
    assert total.item() == pytest.approx(2.0 * 1.0 + 0.5 * 1.5)
    assert parts == {"loss": pytest.approx(2.75), "rank_loss": pytest.approx(1.0), "sft_loss": pytest.approx(1.5), "rank_accuracy": 0.0}
    assert ranking_accuracy(t([[-0.5, -1.5]]), rewards, mask).item() == 1.0
    assert math.isnan(ranking_accuracy(scores, t([[1.0, 1.0]]), mask).item())


def test_head_logprobs_values_and_gradients_match_autograd():
    """The custom backward of the output head equals plain autograd through log_softmax (float64, 3 chunks)."""
    from neat_data.lm.logprobs import HeadLogprobs

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, 11, (7,), generator=generator)
    upstream = torch.randn(7, dtype=torch.float64, generator=generator)
    ours = HeadLogprobs.apply(hidden, weight, targets, 3)
    (ours.double() * upstream).sum().backward()
    ours_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    reference = torch.log_softmax(hidden @ weight.t(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    (reference * upstream).sum().backward()
    assert torch.allclose(ours.double(), reference, atol=1e-6)
    assert torch.allclose(ours_grads[0], hidden.grad, atol=1e-6) and torch.allclose(ours_grads[1], weight.grad, atol=1e-6)


def test_head_logprobs_without_gradients_give_the_same_values():
    from neat_data.lm.logprobs import head_logprobs

    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 5, generator=generator)
    head = torch.nn.Linear(5, 11, bias=False)  # a Parameter: requires_grad, as in a loaded model
    targets = torch.randint(0, 11, (7,), generator=generator)
    with torch.no_grad():
        streamed = head_logprobs(hidden, head, targets, 3)  # only a 3-row logits buffer is kept
        reference = torch.log_softmax(hidden @ head.weight.t(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    assert not streamed.requires_grad and torch.allclose(streamed, reference, atol=1e-5)


def nll_sigmoid(x: float) -> float:
    """−log σ(x)"""
    return math.log1p(math.exp(-x))


def test_dpo_one_pair_hand_computed_with_gradient():
    # s = [-3, -5], s_ref = [-4, -4] → h = [1, -1]; β = 0.5: margin 0.5·(1 − (−1)) = 1 → −log σ(1)
    sums = t([[-3.0, -5.0]]).requires_grad_()
    reference, rewards, mask = t([[-4.0, -4.0]]), t([[1.0, 0.0]]), t([[1, 1]])
    pairs = best_vs_worst_pairs(rewards, torch.zeros(1, 2, dtype=torch.long), mask)
    assert pairs.tolist() == [[[False, True], [False, False]]]  # (w=0, l=1)
    loss = dpo_loss(sums, reference, pairs, beta=0.5)
    assert loss.item() == pytest.approx(nll_sigmoid(1.0))
    loss.backward()
    sigma = 1 / (1 + math.exp(1.0))  # σ(−1)
    assert sums.grad.tolist() == [[pytest.approx(-0.5 * sigma), pytest.approx(0.5 * sigma)]]  # descent raises s_w, lowers s_l
    assert dpo_accuracy(sums.detach(), reference, pairs).item() == 1.0
    # the reference cancels when it equals the policy: every pair gives log 2
    assert dpo_loss(sums.detach(), sums.detach(), pairs, beta=0.5).item() == pytest.approx(math.log(2))


def test_best_vs_worst_pairs_ignore_padding_and_ties():
    rewards = t([[1.0, 3.0, 2.0, 99.0], [1.0, 1.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    pairs = best_vs_worst_pairs(rewards, torch.zeros(2, 4, dtype=torch.long), mask)
    assert pairs[0].nonzero().tolist() == [[1, 0]]  # best real = slot 1 (3.0; the padded 99 does not count), worst = slot 0
    assert not pairs[1].any()  # all real rewards equal: no pair


def test_pos_vs_neg_pairs_and_dpo_mean_per_prompt():
    # prompt 0: slots (pos, pos, neg) → 2 pairs; prompt 1: (neg, pos, padded) → 1 pair
    steering = torch.tensor([[1, 1, -1], [-1, 1, 1]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    pairs = pos_vs_neg_pairs(t([[0.0, 5.0, 9.0], [9.0, 0.0, 0.0]]), steering, mask)  # rewards are not read
    assert pairs[0].nonzero().tolist() == [[0, 2], [1, 2]] and pairs[1].nonzero().tolist() == [[1, 0]]
    sums, reference = t([[-1.0, -2.0, -3.0], [-2.0, -1.0, 0.0]]), t([[-1.0, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    # h = [[0, −1, −2], [−1, 0, ·]], β = 1: prompt 0 margins 0−(−2) = 2 and −1−(−2) = 1; prompt 1 margin 0−(−1) = 1
    expected = ((nll_sigmoid(2.0) + nll_sigmoid(1.0)) / 2 + nll_sigmoid(1.0)) / 2
    assert dpo_loss(sums, reference, pairs, beta=1.0).item() == pytest.approx(expected)
    # no pair anywhere: 0, and still a graph to call backward on
    empty = dpo_loss(sums.clone().requires_grad_(), reference, torch.zeros(2, 3, 3, dtype=torch.bool), beta=1.0)
    empty.backward()
    assert empty.item() == 0.0


def test_losses_by_name_give_the_hand_computed_values():
    from typing import get_args

    from neat_data.train.loss import LossName

    assert set(LOSSES) == set(get_args(LossName)) == {"rrhf", "pro", "dpo", "sft"}
    # per-token scores p = [-1.5, -0.5] from sums [-3, -0.5] over [2, 1] tokens (the neat_loss case above)
    inputs = LossInputs(
        sums=t([[-3.0, -0.5]]),
        counts=t([[2, 1]]),
        rewards=t([[2.0, 1.0]]),
        candidate_mask=t([[1, 1]]),
        steering=torch.tensor([[1, -1]]),
        reference_sums=t([[-3.0, -1.0]]),
    )
    settings = LossSettings(rank_weight=2.0, sft_weight=0.5, beta=1.0)
    assert LOSSES["rrhf"](inputs, settings)[0].item() == pytest.approx(2.0 * 1.0 + 0.5 * 1.5)
    assert LOSSES["pro"](inputs, settings)[0].item() == pytest.approx(
        2.0 * pro_loss(t([[-1.5, -0.5]]), inputs.rewards, inputs.candidate_mask).item() + 0.75
    )
    total, parts = LOSSES["sft"](inputs, settings)
    assert total.item() == pytest.approx(0.5 * 1.5) and parts["rank_loss"] == 0.0 and parts["sft_loss"] == pytest.approx(1.5)
    # dpo on the sums: h = [0, 0.5], pair (0, 1): −log σ(1·(0 − 0.5)), plus w_sft·1.5
    total, parts = LOSSES["dpo"](inputs, settings)
    assert parts["rank_loss"] == pytest.approx(nll_sigmoid(-0.5)) and total.item() == pytest.approx(2.0 * nll_sigmoid(-0.5) + 0.75)
    assert parts["rank_accuracy"] == 0.0 and parts["pairs"] == 1.0
    assert LOSSES["dpo"](inputs, LossSettings(beta=1.0, dpo_pairs="pos-vs-neg", sft_weight=0.0))[0].item() == pytest.approx(
        nll_sigmoid(-0.5)
    )
    with pytest.raises(ValueError, match="reference"):
        LOSSES["dpo"](LossInputs(inputs.sums, inputs.counts, inputs.rewards, inputs.candidate_mask, inputs.steering), settings)


def test_train_config_refuses_unknown_losses_and_empty_objectives():
    from pydantic import ValidationError

    from neat_data.train.trainer import TrainConfig

    with pytest.raises(ValidationError, match="'rrhf', 'pro', 'dpo' or 'sft'"):
        TrainConfig(data=".", model="m", out=".", loss="ipo")
    with pytest.raises(ValidationError, match="trains nothing"):
        TrainConfig(data=".", model="m", out=".", loss="sft", sft_weight=0)
    with pytest.raises(ValidationError, match="dpo_pairs"):
        TrainConfig(data=".", model="m", out=".", loss="dpo", dpo_pairs="all-pairs")
    assert TrainConfig(data=".", model="m", out=".", loss="dpo", beta=0.3).beta == 0.3
