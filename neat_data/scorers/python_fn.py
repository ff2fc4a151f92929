"""`python:module:function` scorer: a user callable `(prompts, responses) -> list[float]`.

`prompts` are the neutral conversations (lists of {"role", "content"}), `responses` the texts. The module
is imported normally (it must be importable: installed, or on PYTHONPATH / the current directory).
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable

from neat_data.core.errors import NeatError
from neat_data.scorers.base import ScoreItem, ScoreResult


class PythonScorer:
    def __init__(self, spec: str):
        self.name = spec
        _, _, target = spec.partition(":")
        module_name, _, function_name = target.partition(":")
        if not module_name or not function_name:
            raise NeatError("expected python:<module>:<function>", field="scorer", file=spec)
        if "" not in sys.path:
            sys.path.insert(0, "")  # a scorer module in the current directory is found, like `python -m`
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise NeatError(f"cannot import module '{module_name}': {error}", field="scorer", file=spec) from None
        function = getattr(module, function_name, None)
        if not callable(function):
            raise NeatError(f"module '{module_name}' has no function '{function_name}'", field="scorer", file=spec)
        self.function: Callable[[list[list[dict[str, str]]], list[str]], list[float]] = function

    def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        try:
            values = list(self.function([item.prompt for item in items], [item.response for item in items]))
        except Exception as error:  # the user's code: one line naming it (scrubbed by the CLI), never a traceback
            raise NeatError(
                f"the scorer raised {type(error).__name__}: {' '.join(str(error).split())[:500]}", field="scorer", file=self.name
            ) from None
        if len(values) != len(items):
            raise NeatError(f"returned {len(values)} scores for {len(items)} responses", field="scorer", file=self.name)
        results = []
        for value in values:
            try:
                number = float(value)
            except (TypeError, ValueError):
                results.append(ScoreResult(None, f"scorer returned {value!r}, not a number"))
                continue
            results.append(ScoreResult(number) if math.isfinite(number) else ScoreResult(None, f"scorer returned {number}"))
        return results
