"""NEAT losses as pure functions of per-token log-probs, rewards and masks (see ../shared/NEAT.md, step 4).

Shapes: B prompts, C candidate slots per prompt (prompts with fewer candidates are padded and masked),
T response positions. Every function takes tensors and returns tensors; nothing here touches a model.

    p_i      = (1/|y_i|) Σ_t log π(y_{i,t} | x, y_{i,<t})                    length-normalised score
    RRHF     L_rank = Σ_{r_i < r_j} max(0, p_i − p_j)                        pairwise hinge (Yuan et al. 2023)
    PRO      L_rank = Σ_{k=1}^{n−1} −log( exp(p_k·τ_k^k) / Σ_{i≥k} exp(p_i·τ_k^i) ),
             τ_k^i = r_k − r_i (i > k),  τ_k^k = max_{i>k} τ_k^i                (Song et al. 2023, candidates by reward)
    LM       L_sft  = −p_{i*},  i* = argmax_i r_i                              (NLL per token of the best candidate)
    NEAT     L = w_rank · L_rank + w_sft · L_sft                               (the paper's Eq. 8 family)

Per-prompt sums are averaged over the prompts of the batch, so the loss scale does not depend on the batch
size. Ties in reward give no ranking pair (RRHF) and zero temperature (PRO).
"""

from __future__ import annotations

from typing import Literal

import torch

RankLoss = Literal["rrhf", "pro"]


def sequence_scores(token_logprobs: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-prob of each sequence.

    token_logprobs: [N, T] log π(token) at every response position (anything at masked positions).
    token_mask:     [N, T] 1 for response tokens, 0 for prompt/padding. Returns [N]; an all-masked row gives 0.
    """
    mask = token_mask.to(token_logprobs.dtype)
    return (token_logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def _valid_pairs(rewards: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """[B, C, C] bool: pair (i, j) with both candidates real and r_i < r_j (j should score higher)."""
    real = candidate_mask.bool()
    both = real.unsqueeze(2) & real.unsqueeze(1)
    return both & (rewards.unsqueeze(2) < rewards.unsqueeze(1))


def rrhf_loss(scores: torch.Tensor, rewards: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """RRHF hinge. scores, rewards, candidate_mask: [B, C]. Returns a scalar: mean over prompts of
    Σ_{r_i < r_j} max(0, p_i − p_j)."""
    pairs = _valid_pairs(rewards, candidate_mask)
    hinge = torch.relu(scores.unsqueeze(2) - scores.unsqueeze(1))  # [B, i, j] = max(0, p_i − p_j)
    return (hinge * pairs).sum(dim=(1, 2)).mean()


def pro_loss(scores: torch.Tensor, rewards: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """PRO listwise loss with reward-difference temperatures. scores, rewards, candidate_mask: [B, C].

    Candidates are ordered by reward (best first) inside the function; masked slots take no part. For each
    position k with at least one real candidate after it, the term is a log-softmax over {k, k+1, …} of
    p_i·τ_k^i. Returns a scalar: mean over prompts of Σ_k L_k.
    """
    real = candidate_mask.bool()
    order = torch.where(real, rewards, torch.full_like(rewards, float("-inf"))).argsort(dim=1, descending=True, stable=True)
    p = scores.gather(1, order)
    r = rewards.gather(1, order)
    m = real.gather(1, order)
    count = scores.shape[1]
    later = torch.triu(torch.ones(count, count, dtype=torch.bool, device=scores.device), diagonal=1)  # [k, i]: i > k
    later = later.unsqueeze(0) & m.unsqueeze(1) & m.unsqueeze(2)  # both real
    tau = (r.unsqueeze(2) - r.unsqueeze(1)).masked_fill(~later, 0.0)  # [B, k, i] = r_k − r_i for i > k
    tau_self = tau.masked_fill(~later, float("-inf")).amax(dim=2)  # [B, k] = max_{i>k} τ_k^i
    has_later = later.any(dim=2)
    tau_self = torch.where(has_later, tau_self, torch.zeros_like(tau_self))
    logits = p.unsqueeze(1) * tau  # [B, k, i] = p_i · τ_k^i
    logits = logits.masked_fill(~later, float("-inf"))
    own = p * tau_self  # p_k · τ_k^k
    eye = torch.eye(count, dtype=torch.bool, device=scores.device).unsqueeze(0)
    logits = torch.where(eye, own.unsqueeze(2).expand_as(logits), logits)
    terms = -(own - torch.logsumexp(logits, dim=2))  # [B, k]
    terms = torch.where(has_later & m, terms, torch.zeros_like(terms))
    return terms.sum(dim=1).mean()


def sft_loss(scores: torch.Tensor, rewards: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """NLL per token of each prompt's best candidate: mean over prompts of −p_{argmax r}. Shapes [B, C]."""
    masked = torch.where(candidate_mask.bool(), rewards, torch.full_like(rewards, float("-inf")))
    best = masked.argmax(dim=1, keepdim=True)
    return -scores.gather(1, best).squeeze(1).mean()


def ranking_accuracy(scores: torch.Tensor, rewards: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """Share of pairs with r_i < r_j that the policy orders the same way (p_i < p_j); NaN when no pair."""
    pairs = _valid_pairs(rewards, candidate_mask)
    right = (scores.unsqueeze(2) < scores.unsqueeze(1)) & pairs
    total = pairs.sum()
    if total == 0:
        return torch.tensor(float("nan"))
    return right.sum().float() / total.float()


def neat_loss(scores: torch.Tensor, rewards: torch.Tensor, candidate_mask: torch.Tensor, *, rank_loss: RankLoss = "rrhf",
              rank_weight: float = 1.0, sft_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L = rank_weight · L_rank + sft_weight · L_sft. Shapes [B, C]. Returns (loss, parts for the log)."""
    ranking = rrhf_loss(scores, rewards, candidate_mask) if rank_loss == "rrhf" else pro_loss(scores, rewards, candidate_mask)
    sft = sft_loss(scores, rewards, candidate_mask)
    total = rank_weight * ranking + sft_weight * sft
    with torch.no_grad():
        parts = {"loss": float(total), "rank_loss": float(ranking), "sft_loss": float(sft),
                 "rank_accuracy": float(ranking_accuracy(scores, rewards, candidate_mask))}
    return total, parts
