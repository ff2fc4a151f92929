"""Duplicates for `neat-data audit` (stages/audit/stage.py): exact duplicates over every candidate (normalised text,
hashed, in pandas) and near-duplicates on the sampled candidates (word 3-gram Jaccard; MinHash LSH across prompts).

Normalisation: exact duplicates compare `normalised_texts` (lower case, whitespace runs as one space, trimmed);
near-duplicates compare the word 3-grams of `word_texts` (the same, with every Unicode punctuation mark and symbol
read as a space), so "Hello, world!" and "hello world" share all their 3-grams — an answer re-punctuated or re-cased
is a near-duplicate (Jaccard 1), an exact one only if it is the same text up to case and whitespace."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data.stages.audit.measures import Candidates, figure


def normalised_texts(responses: pa.Array) -> pa.Array:
    """Lower case, whitespace runs as one space, trimmed (null = "")."""
    lowered = pc.utf8_lower(pc.fill_null(responses, ""))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(lowered, r"\s+", " "))


def word_texts(normalised: pa.Array) -> pa.Array:
    """`normalised_texts` with punctuation and symbols (Unicode classes P and S) read as spaces, whitespace collapsed."""
    spaced = pc.replace_substring_regex(normalised, r"[\p{P}\p{S}]+", " ")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(spaced, r"\s+", " "))


def exact_duplicates(candidates: Candidates) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """(the figures, up to three (candidate, its duplicate) index pairs)."""
    import pandas as pd

    texts = normalised_texts(candidates.responses).to_numpy(zero_copy_only=False)
    hashes = pd.util.hash_array(np.asarray(texts, dtype=object))
    frame = pd.DataFrame({"prompt": candidates.prompt, "text": hashes})
    within = frame.duplicated(["prompt", "text"], keep=False).to_numpy()
    per_text = frame.drop_duplicates().groupby("text").size()
    across = frame["text"].isin(per_text.index[per_text.to_numpy() >= 2]).to_numpy()
    total = max(candidates.size, 1)
    examples: list[tuple[int, int]] = []
    for i in np.flatnonzero(within | across)[:1000]:
        if len(examples) == 3:
            break
        if all(hashes[i] != hashes[a] for a, _ in examples):
            j = next(int(j) for j in np.flatnonzero(hashes == hashes[i]) if j != i)
            examples.append((int(i), j))
    return {
        "within_prompt": figure(
            float(within.sum() / total),
            "share of candidates whose normalised text (lower case, whitespace collapsed) equals another candidate's of the same prompt",
        ),
        "across_prompts": figure(float(across.sum() / total), "share of candidates whose normalised text also occurs under another prompt"),
        "any": figure(
            float((within | across).sum() / total), "share of candidates with an exact (normalised) duplicate anywhere in the run"
        ),
    }, examples


def shingles(text: str, size: int = 3) -> set[str]:
    words = text.split()
    if len(words) < size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(
    prompt: np.ndarray, texts: list[str], words: list[str], *, threshold: float, sampled: str, num_perm: int = 64
) -> tuple[dict[str, Any], list[tuple[int, int, float]]]:
    """Near-duplicates that are not exact ones: Jaccard ≥ threshold on word 3-gram shingles of `words` (the
    `word_texts`), `texts` (the `normalised_texts`) differing. Within a prompt every pair is compared; across prompts,
    MinHash LSH (datasketch) proposes candidates and the exact Jaccard confirms them (LSH can miss a pair whose
    similarity is close to the threshold). Returns (the figures, up to three (i, j, Jaccard) examples)."""
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(text) for text in words]
    examples: list[tuple[int, int, float]] = []

    def near(i: int, j: int) -> bool:
        if texts[i] == texts[j]:
            return False
        similarity = jaccard(sets[i], sets[j])
        if similarity >= threshold and len(examples) < 3:
            examples.append((int(i), int(j), similarity))
        return similarity >= threshold

    within = np.zeros(len(texts), dtype=bool)
    across = np.zeros(len(texts), dtype=bool)
    order = np.argsort(prompt, kind="stable")
    bounds = np.flatnonzero(np.diff(prompt[order])) + 1
    for group in np.split(order, bounds):
        for x, i in enumerate(group):
            for j in group[x + 1 :]:
                if near(i, j):
                    within[i] = within[j] = True
    if texts:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        hashes = MinHash.bulk([[s.encode("utf-8") for s in shingle_set] for shingle_set in sets], num_perm=num_perm, seed=1)
        for i, minhash in enumerate(hashes):
            if sets[i]:
                lsh.insert(i, minhash, check_duplication=False)
        for i, minhash in enumerate(hashes):
            if not sets[i] or across[i]:
                continue
            for j in lsh.query(minhash):
                if prompt[j] != prompt[i] and near(i, j):
                    across[i] = across[j] = True
    total = max(len(texts), 1)
    rule = (
        f"Jaccard ≥ {threshold} on word 3-grams of the text in lower case with punctuation and symbols read as spaces, "
        f"exact duplicates excluded ({sampled})"
    )
    return {
        "within_prompt": figure(
            float(within.sum() / total), f"share of candidates with a near-duplicate among the same prompt's candidates: {rule}"
        ),
        "across_prompts": figure(
            float(across.sum() / total),
            f"share with a near-duplicate under another prompt (MinHash LSH proposes, exact Jaccard confirms): {rule}",
        ),
        "any": figure(float((within | across).sum() / total), f"share with a near-duplicate anywhere: {rule}"),
    }, examples
