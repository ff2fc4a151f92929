"""The backend protocol: a batch of chat requests in, per-request results out (in any order).

A request carries the messages to send (system role) and, when steered, the same request with the system
text merged into the first user turn, used by backends whose chat template or server rejects the system
role. Backends never raise for one bad request: they return a RequestResult with `error` set.

Offline batch backends (openai-batch, vllm-batch) may leave requests *pending*: submitted in a batch that has not
finished (`no_wait`, or its status could not be read). They yield nothing for those and, once the iterator is
exhausted, list them in `backend.pending` (index → "batch <id> <status>"). No row is written for a pending
request, so the next run plans it again and the backend attaches to its batch instead of submitting it twice.
Every other backend leaves it empty. A backend subclasses `Backend` to inherit the empty `pending` and `stats`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

OptionsModel = TypeVar("OptionsModel", bound=BaseModel)


def narrow(options: BaseModel, to: type[OptionsModel], **changes: Any) -> OptionsModel:
    """A plain `to` from a config holding its fields among others: what a backend keeps or a Ray actor receives."""
    return to.model_validate(options.model_dump(include=set(to.model_fields)) | changes)


# The sampling fields with their bounds, defined once: Sampling, the recipe's sections and the prompt audit use them.
Temperature = Annotated[float, Field(ge=0.0, le=5.0, description="Sampling temperature.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass.")]
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000, description="New tokens per response.")]
Seed = Annotated[int, Field(ge=0)]


class Sampling(BaseModel):
    """Sampling options shared by every backend; recorded (as JSON) in each row and in the content key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: Temperature = 0.8
    top_p: TopP = 0.95
    max_tokens: MaxTokens = 256
    seed: Seed = Field(0, description="Run seed; per-request seeds derive from it.")


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict[str, str]]
    merged_messages: list[dict[str, str]] | None  # fallback when the system role is rejected; None if unsteered
    n: int
    seed: int
    # A stable name for the request (the generate stage: the content key of its first sample row). Batch backends
    # use it as the line's custom_id, to find the request again in a batch submitted by an earlier (killed) run.
    id: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass
class RequestResult:
    completions: list[Completion] = field(default_factory=list)
    error: str | None = None  # set → every sample of this request becomes an error row with this reason
    system_mode: str = "system"  # system | merged | none
    n_fallback: bool = False  # the server returned fewer choices than n; samples came from separate requests
    # Tokens billed for this request (all its calls, prompt counted once per call); None where the backend does
    # not report usage — neat_data.engines.costs.request_usage then falls back to the completions' own counts.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Backend(Protocol):
    name: str  # "vllm" | "openai" | "fake"
    model: str  # what goes in the `model` column
    pending: Mapping[int, str] = MappingProxyType({})  # batch backends: requests submitted, not answered (module doc)
    stats: Mapping[str, int] = MappingProxyType({})  # what the requests went through (retries by reason, …): the summary

    def generate(self, requests: Iterable[GenerationRequest], sampling: Sampling) -> Iterator[tuple[int, RequestResult]]:
        """Yield (index into requests, result) for every request exactly once, in any order (batch backends: except
        the pending ones, see the module doc). `requests` may be a lazy iterator (the generate stage streams them):
        consume it as you go, never index it or take its length."""
        ...

    def close(self) -> None: ...
