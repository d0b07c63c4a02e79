"""The submit function: POST /v1/jobs, POST /v1/jobs/{id}/cancel, GET /openapi.json."""

from __future__ import annotations

import re

import flask
import functions_framework
from pydantic import ValidationError

from jobs.adapters.http import error_response, json_response, openapi_document, read_json_body, validation_error
from jobs.adapters.wiring import job_service
from jobs.errors import MethodNotAllowed, NotFound, PlatformError
from jobs.models import JobRequest
from jobs.settings import api_settings

_CANCEL = re.compile(r"^/v1/jobs/([^/]+)/cancel$")


@functions_framework.http
def submit(request: flask.Request) -> flask.Response:
    try:
        return _route(request)
    except PlatformError as err:
        return error_response(err)


def _route(request: flask.Request) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    if path == "/openapi.json":
        _require(request, "GET")
        return json_response(openapi_document())
    if path == "/v1/jobs":
        _require(request, "POST")
        return _submit(request)
    if match := _CANCEL.match(path):
        _require(request, "POST")
        view = job_service().cancel(match.group(1), tenant=api_settings().tenant)
        return json_response(view.to_json())
    raise NotFound(f"no route for {path}")


def _submit(request: flask.Request) -> flask.Response:
    settings = api_settings()
    body = read_json_body(request, max_bytes=settings.max_body_bytes)
    try:
        job_request = JobRequest.model_validate(body)
    except ValidationError as err:
        raise validation_error(err) from None
    view, created = job_service().submit(
        job_request, tenant=settings.tenant, idempotency_key=request.headers.get("Idempotency-Key")
    )
    return json_response(view.to_json(), 202 if created else 200, {"Location": f"/v1/jobs/{view.id}"})


def _require(request: flask.Request, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowed(f"{request.method} is not allowed here; use {method}")
