"""What the sync and async clients share: request bodies, retry delays, the stream's deltas, the
arguments of map(). No I/O here: each client does its own."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import uuid
from typing import Any

import httpx

from llmq.errors import APIConnectionError, APIStatusError, StreamDivergedError, error_from_response

log = logging.getLogger("llmq")

RETRY_STATUSES = frozenset({429, 502, 503})
MAX_RETRY_AFTER_SECONDS = 60.0
SERVER_MAX_WAIT_SECONDS = 60.0  # the status function holds `?wait` at most this long
LISTENER_RECHECK_SECONDS = 10.0  # a listener can miss a change (the emulator's under load): read now and then


def recheck_seconds(remaining: float | None) -> float:
    """How long to wait for a listener's wake-up before reading the job anyway: the recheck interval, or the
    time left (None: no deadline) if that is shorter."""
    return LISTENER_RECHECK_SECONDS if remaining is None else min(remaining, LISTENER_RECHECK_SECONDS)
POLL_MIN_SECONDS, POLL_MAX_SECONDS = 0.25, 2.0
USER_AGENT = "llmq-python"


def job_body(prompt: str | None, messages: list[dict[str, Any]] | None, params: dict[str, Any]) -> dict[str, Any]:
    """The POST /v1/jobs body: exactly one of prompt / messages, and the parameters that are not None."""
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt and messages")
    body: dict[str, Any] = {"prompt": prompt} if prompt is not None else {"messages": messages}
    body.update({k: v for k, v in params.items() if v is not None})
    return body


def new_idempotency_key() -> str:
    """A key for one submit call, so that the client's own retries of it can never create a second job."""
    return f"llmq-{uuid.uuid4().hex}"


def content_key(*parts: str) -> str:
    """A deterministic idempotency key from what identifies a request (map()'s and `llmq run`'s)."""
    return "llmq-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds before retry `attempt` (0-based): the server's Retry-After when it sent one (capped),
    otherwise exponential backoff with full jitter."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER_SECONDS)
    return float(random.uniform(0, min(8.0, 0.5 * 2**attempt)))


def is_retryable(err: Exception) -> bool:
    if isinstance(err, APIStatusError):
        return err.status_code in RETRY_STATUSES
    return isinstance(err, APIConnectionError)


def parse(response: httpx.Response) -> Any:
    """The body of a 2xx answer; raises the error family's exception otherwise."""
    if response.status_code >= 400:
        raise error_from_response(response)
    return response.json()


def stream_delta(sent: str, output: str | None, job_id: str) -> str:
    """What `output` adds to the text already yielded."""
    output = output or ""
    if not output.startswith(sent):
        raise StreamDivergedError(f"job {job_id}: its output no longer extends what was streamed")
    return output[len(sent):]


def split_map_request(request: dict[str, Any], index: int, key_prefix: str | None) -> tuple[str | None, str, dict[str, Any]]:
    """A map() request is a job body, plus optionally `custom_id` and `idempotency_key`. Returns the
    custom id, the idempotency key (given; else derived from key_prefix, the custom id or index and the
    body, so a rerun finds the same job; else fresh) and the body to send."""
    body = dict(request)
    custom_id = body.pop("custom_id", None)
    key = body.pop("idempotency_key", None)
    if key is None:
        key = (content_key(key_prefix, str(custom_id if custom_id is not None else index), canonical(body))
               if key_prefix is not None else new_idempotency_key())
    return (str(custom_id) if custom_id is not None else None), str(key), body


def headers(api_key: str | None) -> dict[str, str]:
    out = {"User-Agent": USER_AGENT}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def wait_param(remaining: float | None) -> float:
    return SERVER_MAX_WAIT_SECONDS if remaining is None else max(0.0, min(SERVER_MAX_WAIT_SECONDS, remaining))


def parse_bytes(response: httpx.Response) -> None:
    """Raise the error family's exception for a non-JSON download that failed."""
    if response.status_code >= 400:
        raise error_from_response(response)
