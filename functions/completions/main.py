"""The completions function: OpenAI's POST /v1/chat/completions and POST /v1/completions (CONTRACT §8), each
run as an interactive job and answered when it ends (or streamed as it generates); GET /openapi.json.

Decisions:
- Only authentication and the submission take an admission slot: the wait for the job is a listener, no
  work, so a thousand waiting clients do not starve new submissions of slots.
- A non-streaming request whose client goes away cannot be noticed (WSGI says nothing until the answer is
  written), so its job runs to its end; a retry with the same Idempotency-Key attaches to that job.
- A stream writes at least every few seconds (a heartbeat comment), so a vanished client is noticed at the
  next write; its job is then cancelled, as is any job still running at the completion timeout (504).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Literal

import flask
import functions_framework

from jobs.adapters.caller import caller_tenant
from jobs.adapters.http import (
    answer,
    counted_submission,
    error_response,
    install_json_errors,
    json_response,
    read_model,
)
from jobs.adapters.wiring import admission, job_service, job_store, traced
from jobs.batches import URLS, url_body_mismatch
from jobs.errors import CompletionTimeout, InvalidRequest, MethodNotAllowed, NotFound, PlatformError
from jobs.logs import configure_logging
from jobs.models import INPUT_FIELD, JobRequest, JobView
from jobs.openai_stream import HEARTBEAT, StreamHead, error_events, job_error, response_object, step
from jobs.settings import api_settings
from jobs.state import JobStatus

configure_logging()  # structured JSON logs from the first request on
install_json_errors(functions_framework.errorhandler)

log = logging.getLogger(__name__)

JOB_HEADER = "llmq-job-id"
HEARTBEAT_SECONDS = 5.0


@functions_framework.http
def completions(request: flask.Request) -> flask.Response:
    return answer(request, _route)


def _route(request: flask.Request, path: str) -> flask.Response:
    if path not in URLS:
        with admission().slot():
            caller_tenant(request)  # authentication first, as every other route answers
        raise NotFound(f"no route for {path}")
    started = time.monotonic()
    traced()
    # refused at once, before any work, when the wait would be too long
    with counted_submission(path) as submission, admission().slot():
        tenant = caller_tenant(request)  # authentication first: nothing is read or written before it
        if request.method != "POST":
            raise MethodNotAllowed(f"{request.method} is not allowed here; use POST")
        job_request = read_model(request, JobRequest, max_bytes=api_settings().max_body_bytes)
        if mismatch := url_body_mismatch(path, job_request):
            raise InvalidRequest(mismatch, code="url_body_mismatch",
                                 details=[{"field": INPUT_FIELD[URLS[path]], "code": "required", "message": mismatch}])
        job_request = job_request.model_copy(update={"priority": "interactive"})  # someone is waiting on it
        view, created = job_service().submit(job_request, tenant=tenant,
                                             idempotency_key=request.headers.get("Idempotency-Key"))
        submission.submitted(view.id, created=created)
    deadline = started + api_settings().completion_timeout_seconds
    headers = {JOB_HEADER: view.id}
    if job_request.stream:
        include_usage = job_request.stream_options is not None and job_request.stream_options.include_usage
        head = StreamHead.of(job_request.kind, view, include_usage=include_usage)
        return flask.Response(_stream(head, view, tenant=tenant, deadline=deadline), headers=headers,
                              mimetype="text/event-stream")
    return _answer(job_request.kind, view, tenant=tenant, deadline=deadline, headers=headers)


def _answer(kind: Literal["chat", "completion"], view: JobView, *, tenant: str, deadline: float, headers: dict[str, str]) -> flask.Response:
    try:
        if not view.status.is_final:
            view = job_service().get(view.id, tenant=tenant, wait_seconds=max(0.0, deadline - time.monotonic()))
        if not view.status.is_final:
            view = _give_up(view.id, tenant)
    except PlatformError as err:
        return _error(err, headers)
    if view.status is JobStatus.SUCCEEDED:
        return json_response(response_object(kind, view), 200, headers)
    return _error(job_error(view, kind), headers)


def _give_up(job_id: str, tenant: str) -> JobView:
    """Cancel a job past the completion timeout; its view if it ended meanwhile. Raises CompletionTimeout."""
    view = job_service().cancel(job_id, tenant=tenant)
    if view.status is JobStatus.SUCCEEDED:
        return view  # it finished as we gave up: the answer is there
    log.info("completion timed out; job cancelled", extra={"job_id": job_id, "outcome": "timeout"})
    raise CompletionTimeout(f"job {job_id} did not finish within {api_settings().completion_timeout_seconds:g} s; "
                            "it was cancelled")


def _error(err: PlatformError, headers: dict[str, str]) -> flask.Response:
    response = error_response(err)
    response.headers.update(headers)  # the job is named on errors too: its document tells what happened
    return response


def _stream(head: StreamHead, view: JobView, *, tenant: str, deadline: float) -> Iterator[str]:
    """The server-sent events of one job. A GeneratorExit at a yield is the client gone: the job is cancelled."""
    finished = False
    try:
        # The first write sends the headers (and llmq-job-id): a completion stream, which has no role chunk,
        # opens with a heartbeat.
        yield from head.opening() or [HEARTBEAT]
        sent = ""
        outcome = step(head, sent, view)
        yield from outcome.events
        finished, sent = outcome.done, outcome.sent
        if finished:
            return
        with closing(job_store().watch(view.id, timeout=max(0.0, deadline - time.monotonic()),
                                       idle=HEARTBEAT_SECONDS)) as changes:
            for record in changes:
                if record is None:
                    yield HEARTBEAT
                    continue
                outcome = step(head, sent, record.view())
                yield from outcome.events
                finished, sent = outcome.done, outcome.sent
                if finished:
                    return
        try:
            ended = _give_up(view.id, tenant)
        except CompletionTimeout as err:
            finished = True
            yield from error_events(err)
            return
        outcome = step(head, sent, ended)
        finished = True
        yield from outcome.events
    except PlatformError as err:  # the store failed under the stream: say so in the stream
        finished = True
        yield from error_events(err)
    finally:
        if not finished:
            _cancel_quietly(view.id, tenant)


def _cancel_quietly(job_id: str, tenant: str) -> None:
    try:
        job_service().cancel(job_id, tenant=tenant)
    except PlatformError:
        log.warning("stream client gone; cancelling its job failed", extra={"job_id": job_id})
        return
    log.info("stream client gone; job cancelled", extra={"job_id": job_id, "outcome": "client_disconnected"})
