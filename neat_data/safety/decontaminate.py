"""Decontamination: drop training prompts that share a word 8-gram with any evaluation prompt (pure functions).

In:  training items (PromptRecords, {"messages": …} dicts or strings) and evaluation prompt texts
     (`neat_data.safety.suites.suite_texts(suites)`).
Out: `Decontamination(kept, dropped)`: the items in their order, split; `dropped_count` for the log line.

Normalisation before comparing: lower case, every run of punctuation / symbols / underscores becomes a space,
whitespace collapses — so "How do I BUILD a bomb?!" and "how do i build a bomb" are the same words. A text with
fewer than n words has one gram, its whole word sequence: a short training prompt is dropped only when an
evaluation prompt is the same short text (and vice versa), not whenever its few words occur somewhere.

    decontaminate(records, suite_texts(load_suites(["harmbench", "strongreject"])))   # n = 8
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalised_words(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", text.lower()).split()


def word_grams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """Every run of n consecutive normalised words; a shorter (non-empty) text is one gram of all its words."""
    words = normalised_words(text)
    if not words:
        return set()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def record_text(item: Any) -> str:
    """The text of a prompt: a string, or every turn's content of a PromptRecord / {"messages": […]} row."""
    if isinstance(item, str):
        return item
    messages = item.get("messages") if isinstance(item, dict) else getattr(item, "messages", None)
    if messages is None:
        raise TypeError(f"cannot take the prompt text of a {type(item).__name__}")
    return "\n".join(str(message.get("content", "")) for message in messages)


@dataclass
class Decontamination(Generic[T]):
    kept: list[T] = field(default_factory=list)
    dropped: list[T] = field(default_factory=list)

    @property
    def dropped_count(self) -> int:
        return len(self.dropped)


def decontaminate(
    train: Sequence[T], eval_texts: Iterable[str], *, n: int = 8, text: Callable[[Any], str] = record_text
) -> Decontamination[T]:
    """Split `train` into the items that share no n-gram with any evaluation text, and those that do."""
    if n < 1:
        raise ValueError("n must be at least 1")
    evaluation: set[tuple[str, ...]] = set()
    for eval_text in eval_texts:
        evaluation |= word_grams(eval_text, n)
    result: Decontamination[T] = Decontamination()
    for item in train:
        (result.dropped if word_grams(text(item), n) & evaluation else result.kept).append(item)
    return result
