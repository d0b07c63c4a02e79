"""OpenAI's answers to POST /v1/chat/completions and /v1/completions, built from a job's view: the final
response object, the error of a job that did not succeed, and the server-sent events of a stream. Pure: no
HTTP, no store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from jobs.errors import CompletionTimeout, InvalidRequest, JobCancelled, PlatformError, StreamDiverged
from jobs.models import INPUT_FIELD, JobErrorCode, JobView
from jobs.results import openai_response
from jobs.state import JobStatus

DONE = "data: [DONE]\n\n"
HEARTBEAT = ": keep-alive\n\n"  # an SSE comment: clients ignore it, a vanished client fails the write


def response_object(kind: Literal["chat", "completion"], view: JobView) -> dict[str, Any]:
    """The `chat.completion` / `text_completion` object of a succeeded job, as the runner wrote it to the result
    object (the same id, created and model). The document holds at most jobs.results.MAX_DOCUMENT_OUTPUT_CHARS
    of the output; longer outputs are cut there."""
    assert view.usage is not None and view.output is not None, "a succeeded job has output and usage"
    return openai_response(response_id=view.id, kind=kind, model=view.model, created=view.created_at,
                           text=view.output, finish_reason=view.finish_reason or "stop", usage=view.usage)


def job_error(view: JobView, kind: Literal["chat", "completion"] = "chat") -> PlatformError:
    """The error to answer for a job that ended without succeeding."""
    code = str(view.error.code.value if isinstance(view.error.code, JobErrorCode) else view.error.code) \
        if view.error else ""
    message = view.error.message if view.error else f"job {view.id} ended {view.status.value}"
    if code == JobErrorCode.CONTEXT_LENGTH_EXCEEDED.value:
        return InvalidRequest(message, code=code,
                              details=[{"field": INPUT_FIELD[kind], "code": "too_long", "message": message}])
    if code == JobErrorCode.REJECTED_BY_ENGINE.value:
        return InvalidRequest(message, code=code)
    if code == JobErrorCode.DEADLINE_EXCEEDED.value:
        return CompletionTimeout(message, code=code)
    if view.status is JobStatus.CANCELLED:
        return JobCancelled(f"job {view.id} was cancelled")
    err = PlatformError(message, code=code or "job_failed")
    if code in (JobErrorCode.DEAD_LETTERED.value, JobErrorCode.REQUEST_LOST.value):
        err.status = 503  # the pipeline lost the job: worth a retry
    return err


def event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


@dataclass(frozen=True, slots=True)
class StreamHead:
    """What every chunk repeats: the job's id (the response id), when it was created, the served model."""

    id: str
    kind: Literal["chat", "completion"]
    model: str
    created: int
    include_usage: bool = False

    @classmethod
    def of(cls, kind: Literal["chat", "completion"], view: JobView, *, include_usage: bool) -> StreamHead:
        return cls(view.id, kind, view.model, int(view.created_at.timestamp()), include_usage)

    def chunk(self, *, text: str | None = None, role: bool = False, finish_reason: str | None = None) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice]}
        if self.include_usage:
            body["usage"] = None  # as OpenAI sends it: null on every chunk but the last
        return body

    def opening(self) -> list[str]:
        """The first events: a chat stream names the assistant's role first; a completion stream starts with text."""
        return [event(self.chunk(role=True))] if self.kind == "chat" else []


@dataclass(frozen=True, slots=True)
class StreamStep:
    events: list[str]
    sent: str  # the text sent so far
    done: bool  # the stream is over (DONE included in events)


def step(head: StreamHead, sent: str, view: JobView) -> StreamStep:
    """The events a new state of the job adds, given the text already sent. A partial output that is a
    prefix of `sent` (a takeover regenerating) adds nothing; one that contradicts it ends the stream."""
    text = view.output or ""
    events: list[str] = []
    if text.startswith(sent):
        if len(text) > len(sent):
            events.append(event(head.chunk(text=text[len(sent):])))
            sent = text
    elif not sent.startswith(text) or view.status is JobStatus.SUCCEEDED:
        return _end_with_error(sent, StreamDiverged(f"job {view.id}'s output changed while streaming; "
                                                          f"its result is at GET /v1/jobs/{view.id}"))
    if not view.status.is_final:
        return StreamStep(events, sent, False)
    if view.status is not JobStatus.SUCCEEDED:
        return _end_with_error(sent, job_error(view, head.kind), events)
    events.append(event(head.chunk(finish_reason=view.finish_reason or "stop")))
    if head.include_usage and view.usage is not None:
        events.append(event({"id": head.id, "object": head.chunk()["object"], "created": head.created,
                             "model": head.model, "choices": [], "usage": view.usage.model_dump()}))
    events.append(DONE)
    return StreamStep(events, sent, True)


def error_events(err: PlatformError) -> list[str]:
    """A stream that fails ends with OpenAI's error event, then [DONE]."""
    return [event(err.to_body()), DONE]


def _end_with_error(sent: str, err: PlatformError, events: list[str] | None = None) -> StreamStep:
    return StreamStep([*(events or []), *error_events(err)], sent, True)
