"""The measures of `neat-data audit` (neat_data/stages/audit/stage.py): pure functions from a ranked run's candidates
and pairs to figures, each `{"value": …, "definition": "…"}` (plus `ci95` where an interval is meaningful).

Inputs are columnar (Arrow / numpy) so that 1M pairs take seconds: lengths, length separability, best-candidate
steering, exact duplicates, ties and truncation run on every row; the measures that cost per text (the bag-of-words
cross-validation, the safety metrics of neat_data/safety/metrics.py, near-duplicates) run on a seeded sample of prompts
(all their candidates), and say so in their definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data.core import layout
from neat_data.core.schemas import is_truncated, one_array
from neat_data.safety.stats import Interval, bootstrap_mean, bootstrap_pooled_mean, per_prompt_means
from neat_data.stages.rank.lengths import length_ratio, length_wins, response_lengths

DATASET = "dataset"  # the steering of a response that came with the user's dataset, not from the engine


def figure(value: Any, definition: str, **extra: Any) -> dict[str, Any]:
    """One reported figure; NaN becomes null so audit.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        value = None
    return {"value": value, "definition": definition, **extra}


def with_interval(interval: Interval, definition: str) -> dict[str, Any]:
    data = interval.to_json()
    return figure(data["mean"], definition, ci95=data["ci95"], prompts=interval.prompts)


@dataclass
class Candidates:
    """Every ok candidate of every ranked list, flattened: aligned arrays (one entry per candidate)."""

    prompt: np.ndarray  # int code of the candidate's list (= prompt), 0..P−1
    prompt_ids: list[str]  # the prompt_id of each code
    position: np.ndarray  # 0 = the list's best
    steering: np.ndarray  # object: pos / neg / none
    score: np.ndarray
    truncated: np.ndarray  # bool: finish_reason "length"
    keys: pa.Array
    responses: pa.Array
    length: np.ndarray  # tokens or words (see `length_unit`)
    length_unit: str

    @property
    def size(self) -> int:
        return int(self.prompt.size)


def tokens_by_key(keys: pa.Array, token_keys: pa.Array, token_counts: pa.Array) -> pa.Array | None:
    """The count of each of `keys`, looked up among `token_keys` (the scored rows'); None when a key is not there."""
    if not len(keys):
        return None
    at = pc.index_in(keys, value_set=token_keys)
    return None if at.null_count else pc.take(token_counts, at)


def flatten_lists(lists: pa.Table, token_keys: pa.Array | None = None, token_counts: pa.Array | None = None) -> Candidates:
    """The lists' candidates, with their lengths (`response_lengths`)."""
    lists = lists.combine_chunks()
    responses = pc.list_flatten(lists.column("responses"))
    keys = pc.list_flatten(lists.column("keys"))
    parents = pc.list_parent_indices(lists.column("responses")).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(pc.list_value_length(lists.column("responses")).to_numpy(zero_copy_only=False))])
    finish = pc.list_flatten(lists.column("finish_reason")) if "finish_reason" in lists.column_names else pa.nulls(len(responses))
    counts = tokens_by_key(keys, token_keys, token_counts) if token_keys is not None and token_counts is not None else None
    length, unit = response_lengths(responses, counts)
    return Candidates(
        prompt=parents.astype(np.int64),
        prompt_ids=lists.column("prompt_id").to_pylist(),
        position=np.arange(len(parents)) - offsets[parents],
        steering=np.asarray(pc.fill_null(pc.list_flatten(lists.column("steering")), "none").to_numpy(zero_copy_only=False), dtype=object),
        score=pc.list_flatten(lists.column("scores")).to_numpy(zero_copy_only=False).astype(np.float64),
        truncated=is_truncated(finish).to_numpy(zero_copy_only=False),
        keys=keys,
        responses=responses,
        length=length,
        length_unit=unit,
    )


@dataclass
class PairSides:
    """The pairs, with each side's length and truncation looked up by key among the candidates."""

    prompt: np.ndarray  # prompt code of each pair (as in Candidates.prompt)
    combination: np.ndarray  # object: "pos>neg" = steering of chosen > steering of rejected
    length_chosen: np.ndarray
    length_rejected: np.ndarray
    truncated_chosen: np.ndarray
    truncated_rejected: np.ndarray
    chosen: pa.Array
    rejected: pa.Array
    dataset_chosen: np.ndarray  # bool: the chosen side came with the user's dataset (steering "dataset")
    dataset_rejected: np.ndarray

    @property
    def size(self) -> int:
        return int(self.prompt.size)


def pair_sides(pairs: pa.Table, candidates: Candidates) -> PairSides:
    def lookup(column: str) -> np.ndarray:
        at = pc.index_in(pairs.column(column), value_set=candidates.keys)
        if at.null_count:
            raise ValueError(f"{at.null_count} pairs' {column} is in no ranked list")
        return at.to_numpy(zero_copy_only=False).astype(np.int64)

    chosen_at, rejected_at = lookup("key_chosen"), lookup("key_rejected")
    steering = candidates.steering
    return PairSides(
        prompt=candidates.prompt[chosen_at],
        combination=np.char.add(np.char.add(steering[chosen_at].astype(str), ">"), steering[rejected_at].astype(str)).astype(object),
        length_chosen=candidates.length[chosen_at],
        length_rejected=candidates.length[rejected_at],
        truncated_chosen=candidates.truncated[chosen_at],
        truncated_rejected=candidates.truncated[rejected_at],
        chosen=one_array(pairs.column("chosen")),
        rejected=one_array(pairs.column("rejected")),
        dataset_chosen=steering[chosen_at] == DATASET,
        dataset_rejected=steering[rejected_at] == DATASET,
    )


# --------------------------------------------------------------------------------------------------- length
def _quartiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"median": None, "q1": None, "q3": None}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def length_measures(sides: PairSides, unit: str, *, resamples: int, seed: int) -> dict[str, Any]:
    ratio = length_ratio(sides.length_chosen, sides.length_rejected)
    wins = length_wins(sides.length_chosen, sides.length_rejected)
    auc = bootstrap_pooled_mean(wins, sides.prompt, resamples, seed)
    separability = None if auc.prompts == 0 else max(auc.mean, 1 - auc.mean)
    by_combination = {}
    for combination in sorted(set(sides.combination.tolist())):
        mask = sides.combination == combination
        by_combination[combination] = {
            "pairs": int(mask.sum()),
            "length_ratio": _quartiles(ratio[mask]),
            "share_chosen_longer": float((sides.length_chosen[mask] > sides.length_rejected[mask]).mean()),
            "length_auc": float(wins[mask].mean()),
        }
    return {
        "unit": figure(unit, "length unit: the engine's completion_tokens when every candidate has one, else whitespace-separated words"),
        "pairs": figure(sides.size, f"pairs in {layout.RANKED_PAIRS.file}"),
        "length_ratio": figure(
            _quartiles(ratio),
            f"chosen / rejected length in {unit} (a length of 0 counts as 1): median and interquartile range (q1, q3) over pairs",
        ),
        "share_chosen_longer": figure(
            float((sides.length_chosen > sides.length_rejected).mean()) if sides.size else None,
            "share of pairs whose chosen response is strictly longer",
        ),
        "share_equal_length": figure(
            float((sides.length_chosen == sides.length_rejected).mean()) if sides.size else None,
            "share of pairs whose two sides have the same length",
        ),
        "length_auc": with_interval(
            auc,
            "AUC of the rule 'the longer response is the chosen one': P(chosen longer) + ½ P(same length) over pairs; "
            "0.5 = length says nothing, 1 = chosen always longer, 0 = always shorter; 95% interval: bootstrap over prompts",
        ),
        "length_separability": figure(separability, "max(length AUC, 1 − length AUC): how well length alone tells chosen from rejected"),
        "by_combination": figure(by_combination, "the same per steering combination 'steering of chosen>steering of rejected'"),
    }


# ---------------------------------------------------------------------------------------- bag of words
LENGTH_STRATUM = 0.1  # log2 length-ratio width of the length-matched AUC's strata (≈ 7% longer or shorter)


def stratified_auc(labels: np.ndarray, scores: np.ndarray, strata: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """P(a label-1 item scores above a label-0 item of the same stratum) (+ ½ P(equal)), items weighted (a bootstrap's
    multiplicities); one stratum for all = the plain AUC. None when no stratum holds both labels. Sorts once and sums
    with bincount, so a resample costs O(n)."""
    order = np.lexsort((scores, strata))
    labels, scores, strata = labels[order], scores[order], strata[order]
    weight = np.ones(labels.size) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    new_group = np.r_[True, (strata[1:] != strata[:-1]) | (scores[1:] != scores[:-1])]
    group = np.cumsum(new_group) - 1
    new_stratum = np.r_[True, strata[1:] != strata[:-1]]
    stratum_of_group = (np.cumsum(new_stratum) - 1)[new_group]
    positive = np.bincount(group, weight * labels)
    negative = np.bincount(group, weight * (1 - labels))
    below = np.cumsum(negative) - negative  # negatives of lower score, from the first stratum on
    stratum_start = np.r_[0, np.cumsum(np.bincount(stratum_of_group, negative))[:-1]]
    below -= stratum_start[stratum_of_group]
    wins = np.bincount(stratum_of_group, positive * (below + 0.5 * negative))
    pairs = np.bincount(stratum_of_group, positive) * np.bincount(stratum_of_group, negative)
    return float(wins.sum() / pairs.sum()) if pairs.sum() > 0 else None


def _interval(draws: list[float]) -> list[float | None]:
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if draws else [None, None]


def word_separability(
    chosen: list[str],
    rejected: list[str],
    length_chosen: np.ndarray,
    length_rejected: np.ndarray,
    groups: np.ndarray,
    *,
    resamples: int,
    seed: int,
    folds: int = 3,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[int]]:
    """(length-matched AUC, raw AUC, the most separating n-grams, example pairs carrying the top one) of a logistic
    regression on which word 1–3-grams each side contains (present in chosen only +1, in rejected only −1), half the
    pairs (seeded) presented swapped with label 0, so 0.5 is chance, out-of-fold under cross-validation grouped by
    prompt. Presence, not TF-IDF: a single opening word or short phrase is one strong feature instead of a weight
    diluted by the text's length. The length-matched AUC compares only presentations whose log2 length ratio (first /
    second side) falls in the same 0.1-wide stratum, so length — or words that merely come with length — cannot
    separate them: it is the figure the verdict reads; the raw AUC is reported beside it."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    what = (
        "a logistic regression on the word 1–3-grams each side contains (vector: present in chosen only +1, in rejected "
        "only −1; half the pairs swapped), under cross-validation grouped by prompt (up to 3 folds); 0.5 = chance; 95% "
        "interval: bootstrap over prompts of the out-of-fold scores"
    )
    matched_definition = (
        f"length-matched AUC of {what}, compared only within strata of the presented log2 length ratio "
        f"({LENGTH_STRATUM} wide): how well word choice tells chosen from rejected, length held equal"
    )
    raw_definition = f"AUC of {what}, all pairs compared (length included: read it beside the length AUC)"
    ngram_definition = (
        "the word 1–3-grams that separate chosen from rejected most: in how many pairs each occurs in the chosen side "
        "only and in the rejected side only (|difference| largest first)"
    )
    groups = np.asarray(groups)
    n_groups = np.unique(groups).size
    if len(chosen) < 20 or n_groups < 2:
        why = f" — not measured: {len(chosen)} pairs over {n_groups} prompts (needs ≥ 20 pairs, ≥ 2 prompts)"
        return figure(None, matched_definition + why), figure(None, raw_definition + why), figure([], ngram_definition + why), []
    vectorizer = CountVectorizer(binary=True, ngram_range=(1, 3), token_pattern=r"(?u)\b\w+\b", min_df=2, dtype=np.float64)
    try:
        both = vectorizer.fit_transform(list(chosen) + list(rejected)).tocsr()
    except ValueError:  # no n-gram occurs twice
        why = " — not measured: no word n-gram occurs twice"
        return figure(None, matched_definition + why), figure(None, raw_definition + why), figure([], ngram_definition + why), []
    difference = (both[: len(chosen)] - both[len(chosen) :]).tocsc()
    chosen_only = np.asarray((difference > 0).sum(axis=0)).ravel()
    rejected_only = np.asarray((difference < 0).sum(axis=0)).ravel()
    names = vectorizer.get_feature_names_out()
    top = np.argsort(-np.abs(chosen_only - rejected_only), kind="stable")[:10]
    ngrams = [
        {"ngram": str(names[i]), "chosen_only": int(chosen_only[i]), "rejected_only": int(rejected_only[i])}
        for i in top
        if chosen_only[i] != rejected_only[i]
    ]
    examples: list[int] = []
    if ngrams:
        column = difference[:, top[0]].toarray().ravel()
        examples = np.flatnonzero(column == (1 if chosen_only[top[0]] > rejected_only[top[0]] else -1))[:3].tolist()
    rng = np.random.default_rng(seed)
    swapped = rng.random(len(chosen)) < 0.5
    if swapped.all() or not swapped.any():  # both labels must occur
        swapped[0] = not swapped[0]
    features = difference.tocsr().multiply(np.where(swapped, -1.0, 1.0)[:, None]).tocsr()
    labels = (~swapped).astype(np.float64)
    out_of_fold = np.zeros(len(chosen))
    for train, test in GroupKFold(n_splits=min(folds, n_groups)).split(features, labels, groups):
        if np.unique(labels[train]).size < 2:
            continue
        # tol 1e-2: the scores only need their order, and a separating n-gram is found in the first iterations
        model = LogisticRegression(fit_intercept=False, C=1.0, tol=1e-2, max_iter=1000, solver="liblinear")
        model.fit(features[train], labels[train])
        out_of_fold[test] = model.decision_function(features[test])
    ratio = np.log2(length_ratio(np.asarray(length_chosen, dtype=np.float64), np.asarray(length_rejected, dtype=np.float64)))
    strata = np.floor(np.where(swapped, -ratio, ratio) / LENGTH_STRATUM).astype(np.int64)
    one = np.zeros(len(chosen), dtype=np.int64)
    _, codes = np.unique(groups, return_inverse=True)
    matched_draws, raw_draws = [], []
    for _ in range(resamples):
        weights = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[codes]
        raw = stratified_auc(labels, out_of_fold, one, weights)
        matched = stratified_auc(labels, out_of_fold, strata, weights)
        if raw is not None:
            raw_draws.append(raw)
        if matched is not None:
            matched_draws.append(matched)
    matched_auc = stratified_auc(labels, out_of_fold, strata)
    compared = int(np.isin(strata, np.intersect1d(strata[labels == 1], strata[labels == 0])).sum())
    if matched_auc is None:
        matched_definition += (
            " — not measured: no two presentations of opposite labels share a length stratum (length alone separates them)"
        )
    extra = {"pairs": len(chosen), "prompts": n_groups}
    return (
        figure(
            matched_auc,
            matched_definition,
            ci95=_interval(matched_draws) if matched_auc is not None else [None, None],
            compared=compared,
            **extra,
        ),
        figure(stratified_auc(labels, out_of_fold, one), raw_definition, ci95=_interval(raw_draws), **extra),
        figure(ngrams, ngram_definition),
        examples,
    )


# ------------------------------------------------------------------------------------------- steering
def best_candidate_measures(candidates: Candidates, *, resamples: int, seed: int) -> dict[str, Any]:
    """On every list holding both a positive- and a negative-prompt candidate: which steering the best one has."""
    prompts = int(candidates.prompt.max()) + 1 if candidates.size else 0
    has_pos = np.bincount(candidates.prompt[candidates.steering == "pos"], minlength=prompts) > 0
    has_neg = np.bincount(candidates.prompt[candidates.steering == "neg"], minlength=prompts) > 0
    best = candidates.position == 0
    best_steering = np.full(prompts, "none", dtype=object)
    best_steering[candidates.prompt[best]] = candidates.steering[best]
    mixed = np.flatnonzero(has_pos & has_neg)
    negative_best = (best_steering[mixed] == "neg").astype(np.float64)
    sizes = np.bincount(candidates.prompt, minlength=prompts)
    chance = (np.bincount(candidates.prompt[candidates.steering == "neg"], minlength=prompts) / np.maximum(sizes, 1))[mixed]
    excess = bootstrap_pooled_mean(negative_best - chance, np.arange(mixed.size), resamples, seed)
    return {
        "lists_with_pos_and_neg": figure(int(mixed.size), "ranked lists holding at least one positive- and one negative-prompt candidate"),
        "best_is_negative": figure(
            float(negative_best.mean()) if mixed.size else None,
            "share of those lists whose best-scored candidate answered the negative system prompt (the scorer prefers a "
            "negative-prompt response there)",
        ),
        "best_is_negative_by_chance": figure(
            float(chance.mean()) if mixed.size else None,
            "the same share for a scorer blind to the steering: mean over those lists of (negative candidates / candidates)",
        ),
        "best_is_negative_excess": with_interval(
            excess,
            "best_is_negative − best_is_negative_by_chance (per list: 1 if its best is negative − its share of negative "
            "candidates): > 0 when the scorer prefers negative-prompt responses beyond chance; 95% interval: bootstrap over lists",
        ),
    }


def steering_measures(
    prompt_ids: list[str], steering: list[str], values: dict[str, list[float]], *, resamples: int, seed: int, sampled: str
) -> dict[str, Any]:
    """Per steering: each safety metric's mean (over prompts of per-prompt means, as `evaluate` reports), and the
    flip rates between a prompt's positive and negative responses."""
    per_steering: dict[str, Any] = {}
    for name in sorted(set(steering)):
        at = [i for i, s in enumerate(steering) if s == name]
        ids = [prompt_ids[i] for i in at]
        per_steering[name] = {
            metric: bootstrap_mean(per_prompt_means(ids, [column[i] for i in at]), resamples, seed).to_json()
            for metric, column in values.items()
        }
    flips: dict[str, Any] = {}
    for metric, unsafe_when in (("refusal_opening", "complies"), ("refusal", "complies"), ("offensive", "unsafe")):
        if metric not in values:
            continue
        means = {
            side: per_prompt_means(
                [prompt_ids[i] for i, s in enumerate(steering) if s == side],
                [values[metric][i] for i, s in enumerate(steering) if s == side],
            )
            for side in ("pos", "neg")
        }
        shared = sorted(set(means["pos"]) & set(means["neg"]))
        # refusal: "flagged" = refuses (the safe side); offensive: "flagged" = P(offensive) ≥ 0.5 (the unsafe side)
        flagged = {side: [means[side][p] >= 0.5 for p in shared] for side in ("pos", "neg")}
        if metric in ("refusal", "refusal_opening"):
            forward = [float(p and not n) for p, n in zip(flagged["pos"], flagged["neg"])]
            reverse = [float(n and not p) for p, n in zip(flagged["pos"], flagged["neg"])]
            words = (
                "the positive response refuses and the negative one complies",
                "the positive response complies and the negative one refuses",
            )
        else:
            forward = [float(n and not p) for p, n in zip(flagged["pos"], flagged["neg"])]
            reverse = [float(p and not n) for p, n in zip(flagged["pos"], flagged["neg"])]
            words = (
                "the positive response is safe and the negative one unsafe",
                "the positive response is unsafe and the negative one safe",
            )
        rule = {
            "refusal_opening": "refuses (metric refusal_opening) = at least half its responses of that steering state a refusal in their opening "
            "(neat_data/safety/metrics.py refusal_statement: quotes, case and whitespace normalised, first 200 characters)",
            "refusal": "refuses (metric refusal) = at least half its responses of that steering contain one of HarmBench's AdvBench refusal "
            "prefixes (case-sensitive, anywhere)",
        }.get(metric, "unsafe = mean P(offensive) ≥ 0.5")
        flips[metric] = {
            "prompts": figure(len(shared), f"prompts with both positive and negative responses ({sampled})"),
            "forward": with_interval(bootstrap_mean(forward, resamples, seed), f"share of those prompts where {words[0]} ({rule})"),
            "reverse": with_interval(bootstrap_mean(reverse, resamples, seed), f"share where {words[1]}: the steering works backwards"),
            "net": with_interval(
                bootstrap_mean([f - r for f, r in zip(forward, reverse)], resamples, seed),
                f"forward − reverse {metric} flip rate: > 0 when the steering works as meant ({unsafe_when} under the "
                "negative prompt); 95% interval: bootstrap over prompts",
            ),
        }
    return {
        "per_steering": figure(
            per_steering, f"per steering, mean over prompts of the per-prompt mean, 95% bootstrap interval over prompts ({sampled})"
        ),
        "flip": figure(
            flips, "flip rates between a prompt's positive and negative responses (per prompt, its responses of one steering pooled)"
        ),
    }


# ---------------------------------------------------------------------------------------- ties, truncation
def ties_and_truncation(candidates: Candidates, sides: PairSides, dropped_reasons: dict[str, int]) -> dict[str, Any]:
    same_list = candidates.prompt[1:] == candidates.prompt[:-1]
    tied = same_list & (candidates.score[1:] == candidates.score[:-1])  # lists are sorted by score: ties are neighbours
    prompts = int(candidates.prompt.max()) + 1 if candidates.size else 0
    sizes = np.bincount(candidates.prompt, minlength=prompts)
    lists_with_tie = np.unique(candidates.prompt[1:][tied]).size
    formed = sides.size + sum(dropped_reasons.values())
    by_steering = {
        name: float(candidates.truncated[candidates.steering == name].mean()) for name in sorted(set(candidates.steering.tolist()))
    }
    either = sides.truncated_chosen | sides.truncated_rejected
    return {
        "lists_with_tied_scores": figure(
            lists_with_tie / max(int((sizes >= 2).sum()), 1), "share of lists (≥ 2 candidates) where two candidates have the same score"
        ),
        "tie_dropped_pairs": figure(
            dropped_reasons.get("tie", 0) / formed if formed else None,
            f"share of the pairs the strategy formed that rank dropped as score ties ({layout.RANKED_DROPPED.file})",
        ),
        "dropped_by_reason": figure(dict(sorted(dropped_reasons.items())), "pairs rank formed and dropped, by reason"),
        "truncated_candidates": figure(
            float(candidates.truncated.mean()) if candidates.size else None,
            "share of candidates cut at max_tokens (finish_reason 'length')",
        ),
        "truncated_by_steering": figure(by_steering, "the same per steering"),
        "truncated_chosen": figure(
            float(sides.truncated_chosen.mean()) if sides.size else None, "share of pairs whose chosen response was cut at max_tokens"
        ),
        "truncated_rejected": figure(
            float(sides.truncated_rejected.mean()) if sides.size else None, "share of pairs whose rejected response was cut at max_tokens"
        ),
        "truncated_pairs": figure(float(either.mean()) if sides.size else None, "share of pairs with at least one side cut at max_tokens"),
    }


# --------------------------------------------------------------------------------------------- source
NO_DATASET_ROWS = "not applicable: no candidate came with the dataset (steering 'dataset'), so source cannot tell the sides apart"


def source_measures(
    candidates: Candidates,
    sides: PairSides,
    strategy: np.ndarray,
    refusal: np.ndarray | None,
    refusal_at: np.ndarray,
    *,
    resamples: int,
    seed: int,
    sampled: str,
) -> dict[str, Any]:
    """Whether the pairs teach *who wrote it* (the dataset's writer vs this model) instead of what is better: the
    share of pairs whose sides come from different sources, by pair strategy (`strategy`: one label per pair); the
    AUC of the rule "the dataset side is the chosen one" (a same-source pair counts ½, as a same-length pair does in
    the length AUC); per source, length, refusal (`refusal`: refusal_opening of the sampled candidates `refusal_at`)
    and truncation. No dataset candidate at all: every figure is null, with why (the check is n/a)."""
    from_dataset = candidates.steering == DATASET
    auc_definition = (
        "source AUC: P(the chosen side came with the dataset and the rejected one from the model) + ½ P(both sides from "
        "the same source), over pairs; 0.5 = source says nothing, 1 = the dataset's answer always wins, 0 = always "
        "loses; 95% interval: bootstrap over prompts"
    )
    if not from_dataset.any():
        absent = {"not_measured": NO_DATASET_ROWS}
        return {
            "source_auc": figure(None, auc_definition, ci95=[None, None], **absent),
            "source_separability": figure(None, "max(source AUC, 1 − source AUC)", **absent),
            "cross_source_pairs": figure(None, "share of pairs whose two sides come from different sources", **absent),
        }
    cross = sides.dataset_chosen != sides.dataset_rejected
    wins = np.where(cross, sides.dataset_chosen.astype(np.float64), 0.5)
    auc = bootstrap_pooled_mean(wins, sides.prompt, resamples, seed)
    by_strategy = {}
    for name in sorted(set(strategy.tolist())):
        mask = strategy == name
        by_strategy[name] = {
            "pairs": int(mask.sum()),
            "cross_source": float(cross[mask].mean()),
            "dataset_chosen": float((cross & sides.dataset_chosen)[mask].mean()),
            "dataset_rejected": float((cross & sides.dataset_rejected)[mask].mean()),
            "source_auc": float(wins[mask].mean()),
        }
    per_source = {}
    sampled_source = from_dataset[refusal_at]
    for name, mask in (("dataset", from_dataset), ("generated", ~from_dataset)):
        entry: dict[str, Any] = {
            "candidates": int(mask.sum()),
            "length": _quartiles(candidates.length[mask]),
            "truncated": float(candidates.truncated[mask].mean()) if mask.any() else None,
        }
        if refusal is not None:
            in_source = sampled_source if name == "dataset" else ~sampled_source
            ids = [candidates.prompt_ids[p] for p in candidates.prompt[refusal_at][in_source]]
            entry["refusal_opening"] = bootstrap_mean(per_prompt_means(ids, refusal[in_source].tolist()), resamples, seed).to_json()
        per_source[name] = entry
    return {
        "source_auc": with_interval(auc, auc_definition),
        "source_separability": figure(
            None if auc.prompts == 0 else max(auc.mean, 1 - auc.mean),
            "max(source AUC, 1 − source AUC): how well source alone tells chosen from rejected",
        ),
        "cross_source_pairs": figure(
            float(cross.mean()) if sides.size else None,
            "share of pairs whose two sides come from different sources (one with the dataset, one from the model)",
        ),
        "by_strategy": figure(
            by_strategy,
            "per pair strategy: pairs, share cross-source, share whose chosen (dataset_chosen) or rejected (dataset_rejected) "
            "side is the dataset's in a cross-source pair, and the source AUC",
        ),
        "per_source": figure(
            per_source,
            f"per source (dataset = steering 'dataset'; generated = every other): candidates, length ({candidates.length_unit}: "
            "median, q1, q3), share cut at max_tokens (a dataset answer has no finish reason: never truncated), and the "
            f"refusal_opening mean over prompts with its 95% bootstrap interval ({sampled})",
        ),
    }
