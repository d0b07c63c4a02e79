"""One error taxonomy for the whole platform, and the one place that maps it to HTTP.

API errors carry their HTTP status. The runner's push path has its own vocabulary, the outcomes of
runner/outcome.py, mapped to the ack protocol in runner/app.py.
"""

from __future__ import annotations

from typing import Any


class PlatformError(Exception):
    """Base of every error that reaches a client. `code` is snake_case and stable."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None, code: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.retry_after = retry_after  # seconds, sent as Retry-After (429, 503)
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        # OpenAI's `type` and `param` beside ours (CONTRACT §8), so OpenAI's SDKs read the error as their own.
        param = next((d.get("field") for d in self.details if d.get("field")), None)
        return {"error": {"code": self.code, "message": self.message, "details": self.details,
                          "type": _OPENAI_TYPES.get(self.status, "api_error"), "param": param}}


# OpenAI's error types by status (its API reference and its SDKs' exception classes).
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
                 413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error"}


class InvalidRequest(PlatformError):
    status, code = 400, "invalid_request"


class Unauthenticated(PlatformError):
    status, code = 401, "unauthenticated"


class Forbidden(PlatformError):
    status, code = 403, "forbidden"


class NotFound(PlatformError):
    status, code = 404, "not_found"


class MethodNotAllowed(PlatformError):
    status, code = 405, "method_not_allowed"


class IdempotencyConflict(PlatformError):
    status, code = 409, "idempotency_key_reused"


class PayloadTooLarge(PlatformError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(PlatformError):
    status, code = 415, "unsupported_media_type"


class QuotaExceeded(PlatformError):
    status, code = 429, "quota_exceeded"


class DependencyUnavailable(PlatformError):
    """A backing service (Firestore, Pub/Sub, GCS) failed; nothing half-written was left behind."""

    status, code = 503, "unavailable"


class Overloaded(PlatformError):
    """This instance has more requests in hand than it can serve in time: answered at once, before any
    work, so the client (or the platform's load balancer) retries elsewhere or later."""

    status, code = 503, "overloaded"


class CompletionTimeout(PlatformError):
    """The job did not end within the completion timeout; it was cancelled."""

    status, code = 504, "timeout"


class JobCancelled(PlatformError):
    """The job was cancelled (through POST /v1/jobs/{id}/cancel) before it ended."""

    status, code = 409, "job_cancelled"


class StreamDiverged(PlatformError):
    """The job's partial output no longer extends what was sent (it restarted on another runner and sampled
    differently); the job goes on, its result is at GET /v1/jobs/{id}."""

    status, code = 500, "stream_diverged"
