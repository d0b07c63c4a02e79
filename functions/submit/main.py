"""The submit function: POST /v1/jobs, POST /v1/jobs/{id}/cancel, POST /v1/batches,
POST /v1/batches/{id}/cancel, POST /v1/webhook_endpoints, POST /v1/webhook_endpoints/{id}/rotate_secret,
DELETE /v1/webhook_endpoints/{id}, GET /openapi.json."""

from __future__ import annotations

import re

import flask
import functions_framework

from jobs.adapters.caller import caller_tenant
from jobs.adapters.http import Submission, answer, counted_submission, install_json_errors, json_response, read_model
from jobs.adapters.wiring import admission, batch_service, endpoint_service, job_service, traced
from jobs.batch_service import CreateBatchRequest
from jobs.errors import MethodNotAllowed, NotFound
from jobs.logs import configure_logging
from jobs.models import JobRequest
from jobs.settings import api_settings
from jobs.webhooks import CreateEndpointRequest, RotateSecretRequest

configure_logging()  # structured JSON logs from the first request on
install_json_errors(functions_framework.errorhandler)

_CANCEL = re.compile(r"^/v1/jobs/([^/]+)/cancel$")
_BATCH_CANCEL = re.compile(r"^/v1/batches/([^/]+)/cancel$")
_ENDPOINT = re.compile(r"^/v1/webhook_endpoints/([^/]+)$")
_ROTATE = re.compile(r"^/v1/webhook_endpoints/([^/]+)/rotate_secret$")


@functions_framework.http
def submit(request: flask.Request) -> flask.Response:
    return answer(request, _route)


def _route(request: flask.Request, path: str) -> flask.Response:
    if path == "/v1/jobs":
        traced()
        with counted_submission(path) as submission, admission().slot():
            return _submit(request, submission)
    with admission().slot():  # refused at once, before any work, when the wait would be too long
        return _work(request, path)


def _work(request: flask.Request, path: str) -> flask.Response:
    tenant = caller_tenant(request)  # authentication first: nothing is read or written before it
    if match := _CANCEL.match(path):
        _require(request, "POST")
        view = job_service().cancel(match.group(1), tenant=tenant)
        return json_response(view.to_json())
    if path == "/v1/batches":
        _require(request, "POST")
        return _create_batch(request, tenant)
    if match := _BATCH_CANCEL.match(path):
        _require(request, "POST")
        return json_response(batch_service().cancel(match.group(1), tenant=tenant).view())
    if path == "/v1/webhook_endpoints":
        _require(request, "POST")
        create = read_model(request, CreateEndpointRequest, max_bytes=api_settings().max_body_bytes)
        return json_response(endpoint_service().create(create, tenant=tenant), 201)
    if match := _ROTATE.match(path):
        _require(request, "POST")
        rotate = (read_model(request, RotateSecretRequest, max_bytes=api_settings().max_body_bytes)
                  if request.content_length else RotateSecretRequest())
        return json_response(endpoint_service().rotate(match.group(1), rotate, tenant=tenant))
    if match := _ENDPOINT.match(path):
        _require(request, "DELETE")
        return json_response(endpoint_service().delete(match.group(1), tenant=tenant))
    raise NotFound(f"no route for {path}")


def _submit(request: flask.Request, submission: Submission) -> flask.Response:
    tenant = caller_tenant(request)  # authentication first: nothing is read or written before it
    _require(request, "POST")
    job_request = read_model(request, JobRequest, max_bytes=api_settings().max_body_bytes)
    view, created = job_service().submit(
        job_request, tenant=tenant, idempotency_key=request.headers.get("Idempotency-Key")
    )
    submission.submitted(view.id, created=created)
    return json_response(view.to_json(), 202 if created else 200, {"Location": f"/v1/jobs/{view.id}"})


def _create_batch(request: flask.Request, tenant: str) -> flask.Response:
    create = read_model(request, CreateBatchRequest, max_bytes=api_settings().max_batch_body_bytes)
    record, started = batch_service().create(create, tenant=tenant)
    return json_response(record.view(), 202 if started else 200, {"Location": f"/v1/batches/{record.id}"})


def _require(request: flask.Request, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowed(f"{request.method} is not allowed here; use {method}")
