"""NEAT losses on hand-computed cases: values, gradient signs, masks."""

from __future__ import annotations

import math

import pytest
import torch

from neat_data.train.loss import neat_loss, pro_loss, ranking_accuracy, rrhf_loss, sequence_scores, sft_loss


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_sequence_scores_average_response_tokens_only():
    logprobs = t([[-1.0, -2.0, -3.0, -99.0], [-0.5, -99.0, -99.0, -99.0]])
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert sequence_scores(logprobs, mask).tolist() == [-2.0, -0.5]
    assert sequence_scores(t([[-5.0]]), t([[0]])).tolist() == [0.0]  # nothing to average: 0, not NaN


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
    from neat_data.train.forward import HeadLogprobs

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
    from neat_data.train.forward import HeadLogprobs

    generator = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(7, 5, generator=generator), torch.randn(11, 5, generator=generator)
    targets = torch.randint(0, 11, (7,), generator=generator)
    with torch.no_grad():
        streamed = HeadLogprobs.apply(hidden, weight, targets, 3)  # only a 3-row logits buffer is kept
    reference = torch.log_softmax(hidden @ weight.t(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    assert torch.allclose(streamed, reference, atol=1e-5)
