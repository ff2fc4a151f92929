"""A scripted backend that implements the real protocol and records every request it was sent.

Replies are deterministic ("sample <i> seed <s>: <last user text>"), so tests can assert on rows; a
`fail_when` predicate on the messages turns requests into error results, and `crash_after` raises after
that many requests (to test that rows already flushed survive a dead process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from neat_data.engines.base import Backend, Completion, GenerationRequest, RequestResult, Sampling


class RecordingBackend(Backend):
    name = "fake"

    def __init__(
        self,
        model: str = "fake-model",
        *,
        system_role_ok: bool = True,
        fail_when: Callable[[list[dict[str, str]]], str | None] | None = None,
        crash_after: int | None = None,
        reply: Callable[[list[dict[str, str]], int, int], str] | None = None,
        cut_at_max_tokens: bool = False,
    ):
        self.model = model
        self.system_role_ok = system_role_ok
        self.fail_when = fail_when
        self.crash_after = crash_after
        self.reply = reply  # (messages, sample index, seed) -> text; default: the echo below
        self.cut_at_max_tokens = cut_at_max_tokens  # a reply of more words than max_tokens is cut there: finish "length"
        self.samplings: list[Sampling] = []  # the sampling of each generate() call
        self.sent: list[tuple[list[dict[str, str]], int, int]] = []  # (messages, n, seed) per request, in order
        self.closed = False

    def generate(self, requests: Iterable[GenerationRequest], sampling: Sampling) -> Iterator[tuple[int, RequestResult]]:
        self.samplings.append(sampling)
        for index, request in enumerate(requests):
            if self.crash_after is not None and len(self.sent) >= self.crash_after:
                raise RuntimeError("scripted crash")
            mode = "none" if request.merged_messages is None else "system"
            messages = request.messages
            if mode == "system" and not self.system_role_ok and request.merged_messages is not None:
                messages, mode = request.merged_messages, "merged"
            self.sent.append((messages, request.n, request.seed))
            reason = self.fail_when(messages) if self.fail_when else None
            if reason:
                yield index, RequestResult(error=reason, system_mode=mode)
                continue
            user = messages[-1]["content"]
            texts = [
                self.reply(messages, i, request.seed) if self.reply else f"sample {i} seed {request.seed}: {user}" for i in range(request.n)
            ]
            finish = ["stop"] * request.n
            if self.cut_at_max_tokens:  # one word = one token here
                for i, text in enumerate(texts):
                    if len(text.split()) > sampling.max_tokens:
                        texts[i], finish[i] = " ".join(text.split()[: sampling.max_tokens]), "length"
            completions = [
                Completion(
                    text=texts[i],
                    finish_reason=finish[i],
                    prompt_tokens=sum(len(m["content"].split()) for m in messages),
                    completion_tokens=len(texts[i].split()) if self.cut_at_max_tokens else 4 + i,
                )
                for i in range(request.n)
            ]
            yield index, RequestResult(completions=completions, system_mode=mode)

    def close(self) -> None:
        self.closed = True
