"""The engine port: what the runner needs from any LLM engine (vLLM, transformers, a test double).

Modelled on vLLM's EngineClient: generate with a request id, abort, health. Engines yield cumulative
updates so that streaming, cancellation with partial output and final results share one code path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable


class FinishReason(str, Enum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens (or the per-job time budget) reached
    ABORT = "abort"  # aborted by the caller (cancel, shutdown)


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Structured output (OpenAI's response_format): a JSON schema (serialised), or any JSON object.
    json_schema: str | None = None
    json_object: bool = False


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation. Exactly one of `prompt` (completion) and `messages` (chat) is set."""

    request_id: str
    sampling: SamplingOptions
    prompt: str | None = None
    messages: Sequence[ChatTurn] | None = None
    # Lower runs first (vLLM's convention): interactive jobs 0, batch jobs 1.
    priority: int = 0


@dataclass(frozen=True, slots=True)
class GenerationUpdate:
    """Cumulative state of one generation: `text` is everything generated so far."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None  # None while still generating

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model: str  # the name clients use in the `model` field
    max_model_len: int  # prompt + completion tokens
    max_concurrency: int  # sequences the engine runs at once (vLLM's max_num_seqs)
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters for /readyz and the benchmarks; `forward_passes` far below `tokens_generated` is what batching
    looks like."""

    forward_passes: int
    requests_started: int
    tokens_generated: int
    running: int
    waiting: int = 0  # requests the engine holds but does not run yet (vLLM's scheduler queue)


class EngineError(Exception):
    """Base of engine failures."""


class RequestRejected(EngineError, ValueError):
    """The engine refused the request as invalid (its own validation, e.g. vLLM's): permanent for this job,
    on the push path and in the batch runner alike. A ValueError too, as Python's validation errors are."""


class PromptTooLong(RequestRejected):
    """The prompt (plus max_tokens) does not fit the model's context: permanent for this job."""


class EngineDead(EngineError):
    """The engine cannot serve any more requests: the instance must report unhealthy and exit."""


@runtime_checkable
class Engine(Protocol):
    """An LLM engine with continuous batching. Implementations are async-safe: many generate()
    calls run concurrently and the engine batches them."""

    @property
    def info(self) -> EngineInfo: ...

    @property
    def stats(self) -> EngineStats: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationUpdate]:
        """Yield cumulative updates; the last one has finish_reason set.

        Raises PromptTooLong before yielding if the prompt does not fit, RequestRejected for another invalid
        request, EngineDead if the engine died; another EngineError is transient.
        Closing the iterator (or cancelling the consuming task) aborts the request in the engine.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a running generation; its generate() iterator ends with finish_reason ABORT."""
        ...

    async def check_health(self) -> None:
        """Raise EngineDead if the engine cannot serve."""
        ...

    async def shutdown(self) -> None: ...
