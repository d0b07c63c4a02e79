"""One exception class per error family, each carrying the server's `code`, `message` and `details`
(the API's error body: `{"error": {"code", "message", "details", "type", "param"}}`)."""

from __future__ import annotations

from typing import Any

import httpx


class LlmqError(Exception):
    """Base of every error this package raises."""


class APIConnectionError(LlmqError):
    """The server could not be reached, or did not answer in time (after the client's retries)."""


class ConfigurationError(LlmqError):
    """No base URL or API key could be found (arguments, LLMQ_BASE_URL / LLMQ_API_KEY, or stack.json)."""


class APIStatusError(LlmqError):
    """The server answered with an error status. `code` is the server's stable snake_case code."""

    def __init__(self, status_code: int, *, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 type: str | None = None, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or []
        self.type = type
        self.param = param
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400, 405, 413, 415: the request is invalid; `details` names the fields at fault."""


class AuthenticationError(APIStatusError):
    """401: no API key, or an unknown or revoked one."""


class PermissionDeniedError(APIStatusError):
    """403: the key is valid but not allowed this operation."""


class NotFoundError(APIStatusError):
    """404: no such job or batch (another tenant's id reads the same)."""


class ConflictError(APIStatusError):
    """409: an idempotency key reused with another body."""


class RateLimitError(APIStatusError):
    """429: over the tenant's quota; `retry_after` says when to try again."""


class ServiceUnavailableError(APIStatusError):
    """503: a dependency is down or the service is overloaded; nothing was half-written."""


class GatewayTimeoutError(APIStatusError):
    """504: the server gave up waiting (a completion that did not end in time)."""


class InternalServerError(APIStatusError):
    """Any other 5xx."""


class JobError(LlmqError):
    """A job ended `failed` or `cancelled`; `job` is its final view, `code` its error code (if any)."""

    def __init__(self, job: Any) -> None:
        error = getattr(job, "error", None)
        self.job = job
        self.code: str | None = error.code if error is not None else None
        self.error_message: str | None = error.message if error is not None else None
        reason = f": {self.code}: {self.error_message}" if error is not None else ""
        super().__init__(f"job {job.id} {job.status}{reason}")


class WaitTimeoutError(LlmqError):
    """The job (or batch) was not final when the caller's timeout passed; it goes on running."""

    def __init__(self, resource_id: str, timeout: float) -> None:
        super().__init__(f"{resource_id} was not finished after {timeout:g}s (it goes on)")
        self.resource_id = resource_id
        self.timeout = timeout


class StreamDivergedError(LlmqError):
    """The job's partial output stopped extending what was yielded (it restarted on another runner and
    sampled differently). The job goes on; its final output is at get()."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    405: BadRequestError, 409: ConflictError, 413: BadRequestError, 415: BadRequestError, 422: BadRequestError,
    429: RateLimitError, 503: ServiceUnavailableError, 504: GatewayTimeoutError,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (only the delta-seconds form: the API sends no dates)."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The exception for an error response, read leniently: a body that is not the API's shape
    (a proxy's HTML page, say) still gives an error of the right family."""
    error: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
    except ValueError:
        pass
    status = response.status_code
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
    details = error.get("details")
    return cls(status, code=str(error.get("code") or f"http_{status}"),
               message=str(error.get("message") or response.reason_phrase or "error"),
               details=details if isinstance(details, list) else [],
               type=error.get("type"), param=error.get("param"), retry_after=retry_after_seconds(response))
