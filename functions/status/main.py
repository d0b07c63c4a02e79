"""The status function: GET /v1/jobs/{id}[?wait=N], GET /v1/batches[/{id}], GET /v1/models,
GET /v1/webhook_endpoints[/{id}], GET /openapi.json."""

from __future__ import annotations

import re
import time

import flask
import functions_framework

from jobs.adapters.caller import caller_tenant
from jobs.adapters.http import answer, install_json_errors, int_arg, json_response
from jobs.adapters.wiring import batch_service, endpoint_service, job_service
from jobs.errors import InvalidRequest, MethodNotAllowed, NotFound
from jobs.logs import configure_logging
from jobs.settings import api_settings

configure_logging()  # structured JSON logs from the first request on
install_json_errors(functions_framework.errorhandler)

_JOB = re.compile(r"^/v1/jobs/([^/]+)$")
_BATCH = re.compile(r"^/v1/batches/([^/]+)$")
_ENDPOINT = re.compile(r"^/v1/webhook_endpoints/([^/]+)$")
_STARTED = int(time.time())


@functions_framework.http
def status(request: flask.Request) -> flask.Response:
    return answer(request, _route)


def _route(request: flask.Request, path: str) -> flask.Response:
    tenant = caller_tenant(request)  # authentication first: nothing is read before it
    if request.method != "GET":
        raise MethodNotAllowed(f"{request.method} is not allowed here; use GET")
    if path == "/v1/models":
        return json_response(api_settings().catalog.openai_list(created=_STARTED))
    if match := _JOB.match(path):
        view = job_service().get(match.group(1), tenant=tenant, wait_seconds=_wait(request))
        return json_response(view.to_json())
    if path == "/v1/batches":
        return json_response(batch_service().list(tenant=tenant, limit=int_arg(request, "limit"),
                                                  after=request.args.get("after")))
    if match := _BATCH.match(path):
        return json_response(batch_service().get(match.group(1), tenant=tenant).view())
    if path == "/v1/webhook_endpoints":
        return json_response(endpoint_service().list(tenant=tenant))
    if match := _ENDPOINT.match(path):
        return json_response(endpoint_service().get(match.group(1), tenant=tenant).view())
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
