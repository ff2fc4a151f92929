"""The scorer protocol: score(items) -> list[ScoreResult], one result per item, in order.

A ScoreItem is one response as an answer to the neutral conversation, with the pair's two steering texts
(self-contrast needs both). Scorers never raise for one bad item: they return a ScoreResult with `error`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ScoreItem:
    prompt: list[dict[str, str]]  # the neutral conversation
    response: str
    steering: str
    positive_system: str | None  # the pair's two steering texts (self-contrast needs both)
    negative_system: str | None
    finish_reason: str | None = None  # "stop": the rendering ends with the end-of-turn token; "length": it does not


@dataclass(frozen=True)
class ScoreResult:
    score: float | None
    error: str | None = None
    pending: bool = False  # a batch judge submitted the item and has no answer yet: no row is written for it


class Scorer(Protocol):
    name: str  # recorded in the `scorer` column

    def score(self, items: list[ScoreItem]) -> list[ScoreResult]: ...
