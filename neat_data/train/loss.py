"""Training losses as pure functions of per-sequence log-prob sums, rewards and masks (docs/METHOD.md, step 4).

Shapes: B prompts, C candidate slots per prompt (prompts with fewer candidates are padded and masked).
Every function takes tensors and returns tensors; nothing here touches a model. Per sequence the trainer
hands over s_i = Σ_t log π(y_{i,t} | x, y_{i,<t}) (the response tokens, end-of-turn token included when the
response finished) and |y_i|, the number of those tokens.

    p_i      = s_i / |y_i|                                                   length-normalised score
    RRHF     L_rank = Σ_{r_i < r_j} max(0, p_i − p_j)                        pairwise hinge (Yuan et al. 2023)
    PRO      L_rank = Σ_{k=1}^{n−1} −log( exp(p_k·τ_k^k) / Σ_{i≥k} exp(p_i·τ_k^i) ),
             τ_k^i = r_k − r_i (i > k),  τ_k^k = max_{i>k} τ_k^i                (Song et al. 2023, candidates by reward)
    LM       L_sft  = −p_{i*},  i* = argmax_i r_i                              (NLL per token of the best candidate)
    NEAT     L = w_rank · L_rank + w_sft · L_sft                               (the paper's Eq. 8 family)
    DPO      L_dpo  = −log σ(β[(s_w − s_w^ref) − (s_l − s_l^ref)])            over pairs (w chosen, l rejected),
             sums, not length-normalised; s^ref under the frozen starting policy     (Rafailov et al. 2023, sigmoid)
    SFT      L = w_sft · L_sft                                                 the LM loss alone (context distillation)

Per-prompt sums are averaged over the prompts of the batch, so the loss scale does not depend on the batch
size (DPO: each prompt's mean over its pairs, then the mean over prompts with a pair). Ties in reward give
no ranking pair (RRHF, DPO best-vs-worst) and zero temperature (PRO).

`LOSSES` maps each name of `LossName` to its `Loss`: the objective `(LossInputs, LossSettings) → (loss, parts)`, its
default w_sft and whether it needs reference log-probs; the trainer looks the configured name up there and nowhere
else, and prints whatever parts the objective returns. Importing this module does not import torch
(TrainConfig, and so the CLI, import `LossName`).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

LossName = Literal["rrhf", "pro", "dpo", "sft"]
RankLoss = Literal["rrhf", "pro"]
DpoPairs = Literal["best-vs-worst", "pos-vs-neg"]
# Which candidates of a ranked list a loss reads: all of them (spread down to --max-candidates), the best one alone, or
# one DPO pair per prompt (--dpo-pairs: best vs worst, or every positive- and negative-prompt candidate).
CandidateChoice = Literal["ranked", "best", "pair"]
STEERING_CODES = {"pos": 1, "neg": -1}  # steering → code in LossInputs.steering; anything else is 0


def sequence_scores(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-prob of each sequence: p = s / |y|.

    sums: [...] Σ log π over each sequence's response tokens; counts: [...] how many (same shape).
    Returns the same shape; a sequence with no response token gives 0, not NaN."""
    return sums / counts.to(sums.dtype).clamp(min=1.0)


def _valid_pairs(rewards: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """[B, C, C] bool: pair (i, j) with both candidates real and r_i < r_j (j should score higher)."""
    real = candidate_mask.bool()
    both = real.unsqueeze(2) & real.unsqueeze(1)
    return both & (rewards.unsqueeze(2) < rewards.unsqueeze(1))


def rrhf_loss(scores: torch.Tensor, rewards: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """RRHF hinge. scores, rewards, candidate_mask: [B, C]. Returns a scalar: mean over prompts of
    Σ_{r_i < r_j} max(0, p_i − p_j)."""
    import torch

    pairs = _valid_pairs(rewards, candidate_mask)
    hinge = torch.relu(scores.unsqueeze(2) - scores.unsqueeze(1))  # [B, i, j] = max(0, p_i − p_j)
    return (hinge * pairs).sum(dim=(1, 2)).mean()


def pro_loss(scores: torch.Tensor, rewards: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """PRO listwise loss with reward-difference temperatures. scores, rewards, candidate_mask: [B, C].

    Candidates are ordered by reward (best first) inside the function; masked slots take no part. For each
    position k with at least one real candidate after it, the term is a log-softmax over {k, k+1, …} of
    p_i·τ_k^i. Returns a scalar: mean over prompts of Σ_k L_k.
    """
    import torch

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
    import torch

    masked = torch.where(candidate_mask.bool(), rewards, torch.full_like(rewards, float("-inf")))
    best = masked.argmax(dim=1, keepdim=True)
    return -scores.gather(1, best).squeeze(1).mean()


def ranking_accuracy(scores: torch.Tensor, rewards: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """Share of pairs with r_i < r_j that the policy orders the same way (p_i < p_j); NaN when no pair."""
    import torch

    pairs = _valid_pairs(rewards, candidate_mask)
    right = (scores.unsqueeze(2) < scores.unsqueeze(1)) & pairs
    total = pairs.sum()
    if total == 0:
        return torch.tensor(float("nan"))
    return right.sum().float() / total.float()


RANK_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"rrhf": rrhf_loss, "pro": pro_loss}


def neat_loss(
    scores: torch.Tensor,
    rewards: torch.Tensor,
    candidate_mask: torch.Tensor,
    *,
    rank_loss: RankLoss = "rrhf",
    rank_weight: float = 1.0,
    sft_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = rank_weight · L_rank + sft_weight · L_sft. Shapes [B, C]. Returns (loss, parts for the log)."""
    import torch

    ranking = RANK_LOSSES[rank_loss](scores, rewards, candidate_mask)
    sft = sft_loss(scores, rewards, candidate_mask)
    total = rank_weight * ranking + sft_weight * sft
    with torch.no_grad():
        parts = {
            "loss": float(total),
            "rank_loss": float(ranking),
            "sft_loss": float(sft),
            "rank_accuracy": float(ranking_accuracy(scores, rewards, candidate_mask)),
        }
    return total, parts


# ------------------------------------------------------------------------------------------------- DPO


def best_vs_worst_pairs(rewards: torch.Tensor, steering: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """[B, C, C] bool, (w, l) = (chosen, rejected): each prompt's highest-reward candidate against its lowest
    (the first slot of each on ties); no pair when all its rewards are equal. `steering` is not read."""
    import torch

    real = candidate_mask.bool()
    best = torch.where(real, rewards, torch.full_like(rewards, float("-inf"))).argmax(dim=1)
    worst = torch.where(real, rewards, torch.full_like(rewards, float("inf"))).argmin(dim=1)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    pairs = torch.zeros(rewards.shape[0], rewards.shape[1], rewards.shape[1], dtype=torch.bool, device=rewards.device)
    differ = rewards[rows, best] > rewards[rows, worst]
    pairs[rows, best, worst] = differ & real.any(dim=1)
    return pairs


def pos_vs_neg_pairs(rewards: torch.Tensor, steering: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """[B, C, C] bool, (w, l): every positive-prompt candidate (steering +1) against every negative-prompt
    one (−1), whatever the rewards (RLCD: chosen by construction); P positives × N negatives give P·N pairs."""
    real = candidate_mask.bool()
    positive, negative = real & (steering == 1), real & (steering == -1)
    return positive.unsqueeze(2) & negative.unsqueeze(1)


DPO_PAIRS: dict[str, Callable[..., torch.Tensor]] = {"best-vs-worst": best_vs_worst_pairs, "pos-vs-neg": pos_vs_neg_pairs}


def dpo_loss(sums: torch.Tensor, reference_sums: torch.Tensor, pairs: torch.Tensor, beta: float) -> torch.Tensor:
    """Sigmoid DPO on sequence log-prob sums (not length-normalised).

    sums, reference_sums: [B, C] s_i under the policy and the frozen reference; pairs: [B, C, C] bool, (w, l).
    h_i = s_i − s_i^ref;  term_{wl} = −log σ(β (h_w − h_l)).  Returns a scalar: the mean over prompts that
    have a pair of the mean of their terms (0, still attached to the graph, when no prompt has one)."""
    import torch

    implicit = sums - reference_sums  # [B, C] h_i
    margins = beta * (implicit.unsqueeze(2) - implicit.unsqueeze(1))  # [B, w, l] β(h_w − h_l)
    terms = torch.where(pairs, -torch.nn.functional.logsigmoid(margins), torch.zeros_like(margins))
    count = pairs.sum(dim=(1, 2))
    per_prompt = terms.sum(dim=(1, 2)) / count.clamp(min=1).to(terms.dtype)
    has_pair = (count > 0).to(terms.dtype)
    return (per_prompt * has_pair).sum() / has_pair.sum().clamp(min=1.0)


def dpo_accuracy(sums: torch.Tensor, reference_sums: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Share of pairs whose implicit reward orders them right (h_w > h_l); NaN when no pair. Shapes as dpo_loss."""
    import torch

    implicit = sums - reference_sums
    right = (implicit.unsqueeze(2) > implicit.unsqueeze(1)) & pairs
    total = pairs.sum()
    if total == 0:
        return torch.tensor(float("nan"))
    return right.sum().float() / total.float()


# ------------------------------------------------------------------------------------ objectives by name


@dataclass(frozen=True)
class LossInputs:
    """What an objective reads; every tensor [B, C] (one slot per candidate, padded slots masked)."""

    sums: torch.Tensor  # s_i: Σ log π over the response tokens, under the policy (with gradient)
    counts: torch.Tensor  # |y_i|: response tokens
    rewards: torch.Tensor  # r_i: the ranking scores
    candidate_mask: torch.Tensor  # 1 for real candidates
    steering: torch.Tensor  # +1 positive-prompt, −1 negative-prompt, 0 other (STEERING_CODES)
    reference_sums: torch.Tensor | None = None  # s_i^ref under the starting policy (DPO)


@dataclass(frozen=True)
class LossSettings:
    rank_weight: float = 1.0  # w_rank: RRHF / PRO / DPO term
    sft_weight: float = 1.0  # w_sft: LM term on the best candidate
    beta: float = 0.1  # DPO β
    dpo_pairs: DpoPairs = "best-vs-worst"


Objective = Callable[[LossInputs, LossSettings], "tuple[torch.Tensor, dict[str, float]]"]


def _ranking_objective(name: RankLoss) -> Objective:
    def objective(inputs: LossInputs, settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
        scores = sequence_scores(inputs.sums, inputs.counts)
        return neat_loss(
            scores, inputs.rewards, inputs.candidate_mask, rank_loss=name, rank_weight=settings.rank_weight, sft_weight=settings.sft_weight
        )

    objective.__doc__ = f"{name.upper()} + LM: L = w_rank · L_{name} + w_sft · L_sft on p = s / |y|."
    return objective


def dpo_objective(inputs: LossInputs, settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """L = w_rank · L_dpo(pairs from `settings.dpo_pairs`) + w_sft · L_sft (w_sft defaults to 0)."""
    import torch

    if inputs.reference_sums is None:
        raise ValueError("dpo needs reference log-probs (LossInputs.reference_sums)")
    pairs = DPO_PAIRS[settings.dpo_pairs](inputs.rewards, inputs.steering, inputs.candidate_mask)
    ranking = dpo_loss(inputs.sums, inputs.reference_sums, pairs, settings.beta)
    sft = sft_loss(sequence_scores(inputs.sums, inputs.counts), inputs.rewards, inputs.candidate_mask)
    total = settings.rank_weight * ranking + settings.sft_weight * sft
    with torch.no_grad():
        parts = {
            "loss": float(total),
            "rank_loss": float(ranking),
            "sft_loss": float(sft),
            "pairs": float(pairs.sum()),
            "rank_accuracy": float(dpo_accuracy(inputs.sums, inputs.reference_sums, pairs)),
        }
    return total, parts


def sft_objective(inputs: LossInputs, settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """L = w_sft · L_sft: the LM loss on each prompt's best candidate alone."""
    import torch

    scores = sequence_scores(inputs.sums, inputs.counts)
    sft = sft_loss(scores, inputs.rewards, inputs.candidate_mask)
    total = settings.sft_weight * sft
    with torch.no_grad():
        parts = {
            "loss": float(total),
            "rank_loss": 0.0,
            "sft_loss": float(sft),
            "rank_accuracy": float(ranking_accuracy(scores, inputs.rewards, inputs.candidate_mask)),
        }
    return total, parts


@dataclass(frozen=True)
class Loss:
    """A training loss by name: its objective, w_sft when the user gives none (from the most candidates C of any
    prompt), and whether it needs the starting policy's log-probs. One entry per `LossName`: a new loss cannot
    forget a part (the candidates it reads, whether it needs reference log-probs, whether it ranks at all)."""

    objective: Objective
    default_sft_weight: Callable[[int], float]
    candidates: CandidateChoice = "ranked"
    needs_reference: bool = False
    ranks: bool = True  # it has a ranking / pair term (weighted by rank_weight), beside the LM term

    def __call__(self, inputs: LossInputs, settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(inputs, settings)


# w_sft defaults: 1 (RRHF, SFT), 0.05·(C−1)² (PRO, after the PRO paper), 0 (DPO: the plain baseline).
LOSSES: dict[str, Loss] = {
    "rrhf": Loss(_ranking_objective("rrhf"), lambda most_candidates: 1.0),
    "pro": Loss(_ranking_objective("pro"), lambda most_candidates: 0.05 * (most_candidates - 1) ** 2),
    "dpo": Loss(dpo_objective, lambda most_candidates: 0.0, candidates="pair", needs_reference=True),
    "sft": Loss(sft_objective, lambda most_candidates: 1.0, candidates="best", ranks=False),
}


assert set(LOSSES) == set(typing.get_args(LossName)) and set(RANK_LOSSES) == set(typing.get_args(RankLoss)), "loss names drifted"
assert set(DPO_PAIRS) == set(typing.get_args(DpoPairs)), "DPO pair names drifted"
