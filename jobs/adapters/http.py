"""The HTTP edge shared by the submit and status functions (Flask, as functions-framework gives it):
reading a JSON body within limits, the one mapping from errors to responses, and the API document."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import flask
import yaml
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from jobs import tracing
from jobs.errors import InvalidRequest, MethodNotAllowed, PayloadTooLarge, PlatformError, UnsupportedMediaType
from jobs.validation import UNSUPPORTED_PARAMETER, field_errors, unsupported_fields

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = 32

# The API document sits at the repo root, and beside main.py in a deployed function's archive.
_OPENAPI_CANDIDATES = ("openapi.yaml", "../openapi.yaml", "../../openapi.yaml")


@dataclass
class Submission:
    """What became of one submission: `created`, `existing` (its idempotency key's job), an error's code, or
    `internal` (a defect)."""

    outcome: str = "internal"
    job_id: str | None = None

    def submitted(self, job_id: str, *, created: bool) -> None:
        self.outcome, self.job_id = ("created" if created else "existing"), job_id


@contextmanager
def counted_submission(route: str) -> Iterator[Submission]:
    """One job submission over HTTP: the server span its job's trace starts with, and one log line
    `submission` with its outcome, which the log-based metric `llmq_submissions` counts (docs/DEPLOY.md)."""
    submission = Submission()
    with tracing.tracer().start_as_current_span(f"POST {route}", kind=SpanKind.SERVER) as span:
        try:
            yield submission
        except PlatformError as err:
            submission.outcome = err.code
            raise
        finally:
            if submission.job_id is not None:
                span.set_attribute(tracing.JOB_ID, submission.job_id)
            tracing.record_outcome(span, submission.outcome)
            log.info("submission", extra={"outcome": submission.outcome, "job_id": submission.job_id})


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(body, ensure_ascii=False), status=status, headers=headers,
                          mimetype="application/json")


def error_headers(err: PlatformError) -> dict[str, str]:
    """The headers an error answer carries: when to retry (429, 503), how to authenticate (401)."""
    headers: dict[str, str] = {}
    if err.status in (429, 503):
        headers["Retry-After"] = str(err.retry_after or 1)
    if err.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="llmq"'
    return headers


def error_response(err: PlatformError) -> flask.Response:
    return json_response(err.to_body(), err.status, error_headers(err) or None)


def answer(request: flask.Request, route: Callable[[flask.Request, str], flask.Response]) -> flask.Response:
    """Every API function's entry: `GET /openapi.json` (the only route open without a key), otherwise
    `route(request, path)` with the trailing slash dropped, its PlatformError answered in the API's shape."""
    try:
        path = request.path.rstrip("/") or "/"
        if path == "/openapi.json":
            if request.method != "GET":
                raise MethodNotAllowed(f"{request.method} is not allowed here; use GET")
            return json_response(openapi_document())
        return route(request, path)
    except PlatformError as err:
        return error_response(err)


def install_json_errors(errorhandler: Any) -> None:
    """Make the framework's own errors (an unroutable path, a crash) answer in the API's JSON shape
    instead of Flask's HTML pages. `errorhandler` is functions_framework.errorhandler."""

    @errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> flask.Response:
        code = (err.name or "error").lower().replace(" ", "_")
        error = PlatformError(err.description or err.name, code=code)
        error.status = err.code or 500
        return json_response(error.to_body(), error.status)

    @errorhandler(Exception)
    def _crash(err: Exception) -> flask.Response:  # noqa: ARG001 (Flask's handler signature)
        log.exception("unhandled error")
        return json_response(PlatformError("internal error").to_body(), 500)


def read_json_body(request: flask.Request, *, max_bytes: int) -> Any:
    """The parsed JSON body. Raises PayloadTooLarge (checked before reading), UnsupportedMediaType,
    InvalidRequest (empty, not UTF-8, not JSON, too deeply nested)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"the body must be at most {max_bytes} bytes")
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    raw = request.stream.read(max_bytes + 1)  # bounded even when chunked, without Content-Length
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the body must be at most {max_bytes} bytes")
    if not raw:
        raise InvalidRequest("the body is empty; a JSON object is required", code="invalid_json")
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InvalidRequest("the body is not valid UTF-8", code="invalid_json") from err
    except (json.JSONDecodeError, RecursionError) as err:
        raise InvalidRequest(f"the body is not valid JSON: {_short(err)}", code="invalid_json") from err
    if _depth(body) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"the body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    return body


def int_arg(request: flask.Request, name: str) -> int | None:
    """A whole-number query parameter (None when absent). Raises InvalidRequest naming it."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,9}", raw):  # ASCII digits: str.isdigit() also takes "²", which int() refuses
        raise InvalidRequest(f"{name} must be a whole number", details=[
            {"field": name, "code": "invalid", "message": "a whole number"}])
    return int(raw)


ModelT = TypeVar("ModelT", bound=BaseModel)


def read_model(request: flask.Request, model: type[ModelT], *, max_bytes: int) -> ModelT:
    """The JSON body validated into `model`. Raises the 4xx errors of read_json_body, and
    InvalidRequest with field details when the body does not fit the model."""
    body = read_json_body(request, max_bytes=max_bytes)
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise validation_error(err) from None


def validation_error(err: ValidationError) -> InvalidRequest:
    """The 400 for a body that does not fit its model, with the details of jobs/validation.py."""
    errors = field_errors(err)
    details = [e.as_detail() for e in errors]
    if unsupported := unsupported_fields(errors):
        return InvalidRequest(f"unrecognised request argument(s): {', '.join(unsupported)}",
                              code=UNSUPPORTED_PARAMETER, details=details)
    return InvalidRequest("the request body is invalid", details=details)


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    for candidate in _OPENAPI_CANDIDATES:
        for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
            path = (base / candidate).resolve()
            if path.is_file():
                document: dict[str, Any] = yaml.safe_load(path.read_text())
                return document
    raise FileNotFoundError("openapi.yaml not found")


def _depth(value: Any, level: int = 1) -> int:
    """Nesting depth (stopping past the limit). Raises InvalidRequest for a string that is not valid
    Unicode (a lone surrogate, which JSON escapes allow but no store accepts)."""
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("the body contains an invalid Unicode escape (a lone surrogate)",
                                 code="invalid_json") from None
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in [*value.keys(), *value.values()]), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _short(err: Exception) -> str:
    return str(err)[:200]
