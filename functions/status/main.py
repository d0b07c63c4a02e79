"""The status function: GET /v1/jobs/{id}[?wait=N], GET /v1/models, GET /openapi.json."""

from __future__ import annotations

import re
import time

import flask
import functions_framework

from jobs.adapters.http import error_response, json_response, openapi_document
from jobs.adapters.wiring import job_service
from jobs.errors import InvalidRequest, MethodNotAllowed, NotFound, PlatformError
from jobs.settings import api_settings

_JOB = re.compile(r"^/v1/jobs/([^/]+)$")
_STARTED = int(time.time())


@functions_framework.http
def status(request: flask.Request) -> flask.Response:
    try:
        return _route(request)
    except PlatformError as err:
        return error_response(err)


def _route(request: flask.Request) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    if request.method != "GET":
        raise MethodNotAllowed(f"{request.method} is not allowed here; use GET")
    if path == "/openapi.json":
        return json_response(openapi_document())
    if path == "/v1/models":
        return json_response(api_settings().catalog.openai_list(created=_STARTED))
    if match := _JOB.match(path):
        view = job_service().get(match.group(1), tenant=api_settings().tenant, wait_seconds=_wait(request))
        return json_response(view.to_json())
    raise NotFound(f"no route for {path}")


def _wait(request: flask.Request) -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0
    limit = api_settings().max_wait_seconds
    try:
        wait = float(raw)
    except ValueError:
        wait = -1
    if not 0 <= wait <= limit:
        raise InvalidRequest(
            f"wait must be a number of seconds from 0 to {limit}",
            details=[{"field": "wait", "code": "out_of_range", "message": f"0 to {limit}"}],
        )
    return wait
