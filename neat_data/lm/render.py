"""The one rendering of a candidate: (prompt [+ a steering system prompt], response, finish reason) → token ids.

    ids = chat_template(messages, add_generation_prompt=True) + tokens(response) + [end of turn, if it finished]

Self-contrast (its positive and negative renderings: the system prompt in the scoring model's system mode),
the trainer and the perplexity pass (the neutral prompt: context distillation) all render through
`CandidateRenderer.render`, so the score that ranks a candidate and the score that trains on it are
log-probs of the same token ids. Importing this module imports no torch.

End of turn. Appended only when the response finished: finish_reason "stop". A response cut by the token
budget ("length") — or ended by anything but the model ("abort", "content_filter", …) — gets none: an end
token after a cut sentence teaches the policy to stop mid-sentence. A missing finish reason (null: a
ranked file written before finish reasons travelled, or one from elsewhere) is taken as a finished
response: such files hold complete answers as a rule, and it is what every candidate got before.
The end-of-turn token is the one the policy's chat template closes an assistant turn with (ChatML
`<|im_end|>`, Llama-3 `<|eot_id|>`, Gemma `<end_of_turn>`, found by rendering a probe conversation), or the
tokenizer's eos token when the template shows none.

The response is tokenized on its own, without special tokens, exactly as it is appended after the
generation prompt (the text an engine sampled after that same prompt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from neat_data.core.messages import build_messages, template_accepts_system

FINISHED = "stop"  # the one finish reason that means the model ended its turn itself
_PROBE = "NEATPROBE"


def ends_turn(finish_reason: str | None) -> bool:
    """Whether the candidate gets the end-of-turn token: "stop" or unknown (None) yes, anything else no."""
    return finish_reason is None or finish_reason == FINISHED


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template puts right after an assistant message; else the eos token."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "u"}, {"role": "assistant", "content": _PROBE}], tokenize=False)
    except Exception:  # noqa: BLE001 — templates that refuse an assistant-last conversation, or none at all
        text = None
    if isinstance(text, str) and _PROBE in text:
        after = tokenizer(text.split(_PROBE, 1)[1], add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
        if after and after[0] in special:
            return int(after[0])
    return tokenizer.eos_token_id


@dataclass(frozen=True)
class Candidate:
    """Token ids of prompt + response (+ end of turn); the response occupies ids[prompt_length:]."""

    ids: tuple[int, ...]
    prompt_length: int
    ends_turn: bool  # the last id is the end-of-turn token

    @property
    def response_length(self) -> int:
        return len(self.ids) - self.prompt_length


class CandidateRenderer:
    """Renders candidates for one tokenizer. `system_mode` for steered renderings: "system" when the chat
    template accepts a system message, else "merged" into the first user turn (as generate does)."""

    def __init__(self, tokenizer: Any, *, system_mode: str | None = None):
        self.tokenizer = tokenizer
        self.end_id = end_of_turn_id(tokenizer)
        self.system_mode = system_mode or ("system" if template_accepts_system(tokenizer) else "merged")
        self._last: tuple[str, tuple[int, ...]] | None = None  # candidates of one prompt come together

    def prompt_ids(self, prompt: list[dict[str, str]], system: str | None = None) -> tuple[int, ...]:
        """The conversation through the chat template, generation prompt included."""
        key = json.dumps([prompt, system], sort_keys=True)
        if self._last is None or self._last[0] != key:
            messages = build_messages(prompt, system, self.system_mode)
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            self._last = (key, tuple(ids["input_ids"] if hasattr(ids, "keys") else ids))
        return self._last[1]

    def response_ids(self, response: str) -> list[int]:
        return list(self.tokenizer(response, add_special_tokens=False)["input_ids"])

    def render(self, prompt: list[dict[str, str]], response: str, finish_reason: str | None, *, system: str | None = None) -> Candidate:
        """prompt (neutral, or with `system` as a steering system prompt) + response + end of turn if it finished."""
        prompt_ids = self.prompt_ids(prompt, system)
        end = [self.end_id] if ends_turn(finish_reason) and self.end_id is not None else []
        return Candidate(prompt_ids + tuple(self.response_ids(response) + end), len(prompt_ids), bool(end))
