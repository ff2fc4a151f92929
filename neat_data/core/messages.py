"""The two pure functions around the engine: build the messages of a request; parse a reply into columns.

`build_messages` puts the steering system prompt in front of the neutral conversation (mode "system"), or,
for chat templates that reject the system role, merges it into the first user turn (mode "merged").
`parse_reply` turns one engine completion into the response columns of a generations row.
"""

from __future__ import annotations

from typing import Any, Literal

SYSTEM_MODES = ("system", "merged", "none")
# How the steering text joins a prompt's own system message (a dataset's persona or instructions).
SystemCombine = Literal["prepend", "append", "refuse"]


def combine_system(steering: str | None, own: str | None, combine: SystemCombine = "prepend") -> str | None:
    """The one system text of a request: the steering text and the prompt's own, joined by a blank line (prepend:
    steering first), or whichever exists."""
    if steering is None or own is None:
        return steering if own is None else own
    if combine == "refuse":
        raise ValueError("a prompt with its own system message under system_combine 'refuse'")
    return f"{steering}\n\n{own}" if combine == "prepend" else f"{own}\n\n{steering}"


def build_messages(
    prompt: list[dict[str, str]], system_prompt: str | None, mode: str = "system", combine: SystemCombine = "prepend"
) -> list[dict[str, str]]:
    """Messages sent to the engine for one request.

    prompt: the neutral conversation (an optional leading system message of its own, then user first, ends with user);
    system_prompt: steering text or None, joined with the prompt's own system text by `combine_system`.
    mode "system" → [system, *turns]; "merged" → the first user turn becomes "<system>\\n\\n<user text>" (for chat
    templates and servers that reject the system role).
    """
    messages = [dict(m) for m in prompt]
    own = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else None
    system = combine_system(system_prompt, own, combine)
    if system is None:
        return messages
    if mode == "system":
        return [{"role": "system", "content": system}, *messages]
    if mode == "merged":
        messages[0] = {"role": messages[0]["role"], "content": f"{system}\n\n{messages[0]['content']}"}
        return messages
    raise ValueError(f"unknown system mode {mode!r} (expected one of {SYSTEM_MODES})")


def parse_reply(text: str | None, finish_reason: str | None, prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, Any]:
    """Response columns of one completion. A missing text is an error row, never a silent drop."""
    if text is None:
        return error_columns("engine returned no text", finish_reason, prompt_tokens, completion_tokens)
    return {
        "response": text.strip(),
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "status": "ok",
        "error": None,
    }


def error_columns(
    message: str, finish_reason: str | None = None, prompt_tokens: int | None = None, completion_tokens: int | None = None
) -> dict[str, Any]:
    """Response columns of a request that produced no usable text: the row stays, with status "error" and why."""
    return {
        "response": None,
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "status": "error",
        "error": message,
    }


def require_chat_template(tokenizer: Any, model: str) -> None:
    """A model whose tokenizer has no chat template is not a chat model: every request would fail to render."""
    if not getattr(tokenizer, "chat_template", None):
        from neat_data.core.errors import NeatError

        raise NeatError("the model's tokenizer has no chat template (not a chat/instruct model)", file=model, field="model")


def template_accepts_system(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message (Gemma-style templates raise instead)."""
    try:
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # jinja2 TemplateError "System role not supported" and friends
        return False
    return True
