"""LLM-judge scorer through the same backends as generate (vLLM offline or an OpenAI-compatible server).

- pointwise: each response is rated 1–10 as an answer to the neutral conversation; the reply must contain
  exactly one "Rating: N" (strict parse). Anything else → an error row whose `score_error` keeps the raw reply.
- pairwise: within each prompt, every pair of responses is judged in both orders (A/B, then B/A), so the
  judge's position bias cancels; a response's score is its share of comparisons won. A reply that names
  no single winner is left out of the tally; a response with no valid comparison becomes an error row.
Templates are data: `prompts/judges/<mode>.yaml` (system + user with placeholders), or a YAML path.
Judge requests are sampled greedily (temperature 0) with seeds derived from the request text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from neat_data.core.errors import NeatError
from neat_data.core.files import load_yaml
from neat_data.core.keys import request_seed, text_hash
from neat_data.core.resources import bundled_dir
from neat_data.engines.base import Backend, GenerationRequest, Sampling
from neat_data.scorers.base import ScoreItem, ScoreResult

if TYPE_CHECKING:
    from neat_data.engines import BackendOptions
    from neat_data.engines.batch_journal import BatchJournal

PENDING = "batch pending: submitted, not answered yet"
JudgeMode = Literal["pointwise", "pairwise"]
JudgeBackendName = Literal["openai", "vllm", "openai-batch"]  # the generation backends a judge runs on
_RATING = re.compile(r"rating\s*:\s*\**\s*(\d+)\b", re.IGNORECASE)
_WINNER = re.compile(r"winner\s*:\s*\**\s*([AB])\b", re.IGNORECASE)
JUDGE_SAMPLING = Sampling(temperature=0.0, top_p=1.0, max_tokens=32, seed=0)


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    system: str
    user: str


def load_template(mode: str, spec: str | None = None) -> JudgeTemplate:
    path = Path(spec) if spec else bundled_dir("prompts") / "judges" / f"{mode}.yaml"
    if not path.is_file():
        raise NeatError("judge template not found", file=path, field="judge_template")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), file=path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise NeatError(f"invalid YAML: {getattr(error, 'problem', error)}", file=path, row=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str):
        raise NeatError("a judge template needs a 'user' string (and optionally 'system')", file=path, field="user")
    needed = ("{conversation}", "{response}") if mode == "pointwise" else ("{conversation}", "{response_a}", "{response_b}")
    missing = [p for p in needed if p not in data["user"]]
    if missing:
        raise NeatError(f"user template lacks placeholder {missing[0]}", file=path, field="user")
    return JudgeTemplate(name=path.stem, system=str(data.get("system") or ""), user=data["user"])


def render_conversation(prompt: list[dict[str, str]]) -> str:
    return "\n".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in prompt)


def parse_rating(text: str | None) -> int:
    """The 1–10 rating in a pointwise reply; ValueError unless exactly one valid rating is present."""
    found = _RATING.findall(text or "")
    if len(found) != 1 or not 1 <= int(found[0]) <= 10:
        raise ValueError(f"unparseable rating: {json.dumps((text or '')[:500])}")
    return int(found[0])


def parse_winner(text: str | None) -> str:
    found = {w.upper() for w in _WINNER.findall(text or "")}
    if len(found) != 1:
        raise ValueError(f"unparseable verdict: {json.dumps((text or '')[:500])}")
    return found.pop()


class JudgeScorer:
    def __init__(self, backend: Backend, *, mode: JudgeMode = "pointwise", template: str | None = None):
        if mode not in JudgeMode.__args__:  # type: ignore[attr-defined]
            raise NeatError("judge mode must be pointwise or pairwise", field="judge_mode")
        self.backend = backend
        self.usage: list[Any] = []  # costs.UsageRecord per judge request, for the stage's token and cost accounting
        self.mode = mode
        self.template = load_template(mode, template)
        self.name = f"judge-{mode}:{backend.model}"

    def _request(self, **fields: str) -> GenerationRequest:
        user = self.template.user.format(**fields)
        messages = ([{"role": "system", "content": self.template.system}] if self.template.system else []) + [
            {"role": "user", "content": user}
        ]
        merged = [{"role": "user", "content": f"{self.template.system}\n\n{user}"}] if self.template.system else None
        return GenerationRequest(messages=messages, merged_messages=merged, n=1, seed=request_seed(0, text_hash(user), "judge", None))

    def _replies(self, requests: list[GenerationRequest]) -> list[tuple[str | None, str | None]]:
        """(text, error) per request, in order."""
        from neat_data.engines.costs import UsageRecord, request_usage

        replies: list[tuple[str | None, str | None]] = [(None, "no reply")] * len(requests)
        for index, result in self.backend.generate(requests, JUDGE_SAMPLING):
            self.usage.append(UsageRecord("score", "judge", *request_usage(result)))
            if result.error is not None or not result.completions:
                replies[index] = (None, f"judge request failed: {result.error or 'no completion'}")
            else:
                replies[index] = (result.completions[0].text, None)
        for index in self.backend.pending:  # a batch judge: submitted, not answered yet
            replies[index] = (None, PENDING)
        return replies

    def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        return self._pointwise(items) if self.mode == "pointwise" else self._pairwise(items)

    def _pointwise(self, items: list[ScoreItem]) -> list[ScoreResult]:
        requests = [self._request(conversation=render_conversation(i.prompt), response=i.response) for i in items]
        results = []
        for text, error in self._replies(requests):
            if error is not None:
                results.append(ScoreResult(None, error, pending=error == PENDING))
                continue
            try:
                results.append(ScoreResult(float(parse_rating(text))))
            except ValueError as problem:
                results.append(ScoreResult(None, str(problem)))
        return results

    def _pairwise(self, items: list[ScoreItem]) -> list[ScoreResult]:
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(json.dumps(item.prompt, sort_keys=True), []).append(index)
        comparisons: list[tuple[int, int]] = []  # (index shown as A, index shown as B)
        for members in groups.values():
            for first, second in combinations(members, 2):
                comparisons += [(first, second), (second, first)]
        requests = [
            self._request(conversation=render_conversation(items[a].prompt), response_a=items[a].response, response_b=items[b].response)
            for a, b in comparisons
        ]
        wins = [0] * len(items)
        judged = [0] * len(items)
        problems: dict[int, str] = {}
        waiting: set[int] = set()  # items with a comparison a batch judge has not answered yet
        for (a, b), (text, error) in zip(comparisons, self._replies(requests)):
            if error == PENDING:
                waiting |= {a, b}
                continue
            try:
                if error is not None:
                    raise ValueError(error)
                winner = a if parse_winner(text) == "A" else b
            except ValueError as problem:
                problems.setdefault(a, str(problem))
                problems.setdefault(b, str(problem))
                continue
            wins[winner] += 1
            judged[a] += 1
            judged[b] += 1
        results = []
        for index in range(len(items)):
            if index in waiting:  # its win rate needs every comparison: scored when the batch is collected
                results.append(ScoreResult(None, PENDING, pending=True))
            elif judged[index]:
                results.append(ScoreResult(wins[index] / judged[index]))
            else:
                alone = len(groups[json.dumps(items[index].prompt, sort_keys=True)]) == 1
                results.append(
                    ScoreResult(
                        None,
                        "pairwise judging needs at least two responses per prompt" if alone else problems.get(index, "no valid comparison"),
                    )
                )
        return results


def make_judge(
    model: str,
    backend_name: JudgeBackendName,
    options: BackendOptions,
    *,
    mode: JudgeMode = "pointwise",
    template: str | None = None,
    state_dir: Path | None = None,
    journal: BatchJournal | None = None,
) -> JudgeScorer:
    """A JudgeScorer for `model` on a generation backend, built by the one backend factory (`engines.make_backend`)
    from the same options as `generate`. openai-batch needs `state_dir` (e.g. <run>/batches/score) and takes the
    `journal` of its batches."""
    from neat_data.engines import make_backend

    if backend_name == "openai" and not options.base_url:
        raise NeatError("the openai judge needs --base-url", field="base_url")
    return JudgeScorer(make_backend(backend_name, model, options, state_dir=state_dir, journal=journal), mode=mode, template=template)
