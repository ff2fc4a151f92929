"""Duplicates for `neat-data audit` (stages/data_audit.py): exact duplicates over every candidate (normalised text,
hashed, in pandas) and near-duplicates on the sampled candidates (word 3-gram Jaccard; MinHash LSH across prompts)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data.stages.data_audit_measures import Candidates, figure


def normalised_texts(responses: pa.Array) -> pa.Array:
    """Lower case, whitespace runs as one space, trimmed (null = "")."""
    lowered = pc.utf8_lower(pc.fill_null(responses, ""))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(lowered, r"\s+", " "))


def exact_duplicates(candidates: Candidates) -> dict[str, Any]:
    import pandas as pd

    texts = normalised_texts(candidates.responses).to_numpy(zero_copy_only=False)
    hashes = pd.util.hash_array(np.asarray(texts, dtype=object))
    frame = pd.DataFrame({"prompt": candidates.prompt, "text": hashes})
    within = frame.duplicated(["prompt", "text"], keep=False).to_numpy()
    per_text = frame.drop_duplicates().groupby("text").size()
    across = frame["text"].isin(per_text.index[per_text.to_numpy() >= 2]).to_numpy()
    total = max(candidates.size, 1)
    return {
        "within_prompt": figure(
            float(within.sum() / total),
            "share of candidates whose normalised text (lower case, whitespace collapsed) equals another candidate's of the same prompt",
        ),
        "across_prompts": figure(float(across.sum() / total), "share of candidates whose normalised text also occurs under another prompt"),
        "any": figure(
            float((within | across).sum() / total), "share of candidates with an exact (normalised) duplicate anywhere in the run"
        ),
    }


def shingles(text: str, size: int = 3) -> set[str]:
    words = text.split()
    if len(words) < size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(prompt: np.ndarray, texts: list[str], *, threshold: float, sampled: str, num_perm: int = 64) -> dict[str, Any]:
    """Near-duplicates that are not exact ones: Jaccard ≥ threshold on word 3-gram shingles of the normalised texts.
    Within a prompt every pair is compared; across prompts, MinHash LSH (datasketch) proposes candidates and the exact
    Jaccard confirms them (LSH can miss a pair whose similarity is close to the threshold)."""
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(text) for text in texts]
    within = np.zeros(len(texts), dtype=bool)
    across = np.zeros(len(texts), dtype=bool)
    order = np.argsort(prompt, kind="stable")
    bounds = np.flatnonzero(np.diff(prompt[order])) + 1
    for group in np.split(order, bounds):
        for x, i in enumerate(group):
            for j in group[x + 1 :]:
                if texts[i] != texts[j] and jaccard(sets[i], sets[j]) >= threshold:
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
                if prompt[j] != prompt[i] and texts[j] != texts[i] and jaccard(sets[i], sets[j]) >= threshold:
                    across[i] = across[j] = True
    total = max(len(texts), 1)
    rule = f"Jaccard ≥ {threshold} on word 3-grams of the normalised text, exact duplicates excluded ({sampled})"
    return {
        "within_prompt": figure(
            float(within.sum() / total), f"share of candidates with a near-duplicate among the same prompt's candidates: {rule}"
        ),
        "across_prompts": figure(
            float(across.sum() / total),
            f"share with a near-duplicate under another prompt (MinHash LSH proposes, exact Jaccard confirms): {rule}",
        ),
        "any": figure(float((within | across).sum() / total), f"share with a near-duplicate anywhere: {rule}"),
    }
