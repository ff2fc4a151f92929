"""The OpenAI chat-completions wire format, as pure functions: the JSON body of a request and the completions of an
answer. The online backend POSTs `chat_body`, the batch backends write it as each line's `body` and read answers with
`parse_chat_response`, so every path sends and reads exactly the same thing.
"""

from __future__ import annotations

from typing import Any

from neat_data.engines.base import Completion, Sampling


def chat_body(model: str, messages: list[dict[str, str]], n: int, seed: int, sampling: Sampling) -> dict[str, Any]:
    """The JSON body of one chat-completions request: what the online backend POSTs and what a batch file line
    carries as `body` (neat_data.engines.openai_batch), so both paths send exactly the same request."""
    return {
        "model": model,
        "messages": messages,
        "n": n,
        "seed": seed,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }


def parse_chat_response(data: Any, n: int) -> list[Completion]:
    """Completions from a chat.completion JSON body, in choice order; ValueError if the body is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise ValueError(f"expected a chat.completion object with 'choices', got {type(data).__name__}")
    choices = data["choices"]
    if not choices:
        raise ValueError("response has no choices")
    usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
    completions = []
    for position, choice in sorted(enumerate(choices), key=lambda item: _choice_index(item[1], item[0])):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise ValueError(f"choice {position} has no message")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"choice {position} content is {type(content).__name__}, not a string")
        completions.append(
            Completion(
                text=content,
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens") if len(choices) == 1 else None,
            )
        )
    return completions


def _choice_index(choice: Any, position: int) -> int:
    index = choice.get("index") if isinstance(choice, dict) else None
    return index if isinstance(index, int) else position


class UsageTotal:
    """Tokens billed for one request's successful calls (the `usage` object of each answer); None when any answer
    did not report it (a part of the bill is not the bill: a cap counting it would go on)."""

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self._unreported: set[str] = set()

    def add(self, data: dict[str, Any]) -> None:
        usage = data.get("usage")
        for name in ("prompt_tokens", "completion_tokens"):
            value = usage.get(name) if isinstance(usage, dict) else None
            if not isinstance(value, int):
                self._unreported.add(name)
            elif name not in self._unreported:
                setattr(self, name, (getattr(self, name) or 0) + value)
        for name in self._unreported:
            setattr(self, name, None)


def rejects_system_role(message: str) -> bool:
    """Whether a 400's message says the server does not take the system role (then the request is retried merged)."""
    lowered = message.lower()
    return "system" in lowered and ("role" in lowered or "not supported" in lowered)
