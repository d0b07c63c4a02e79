"""The reconciler function, called by Cloud Scheduler every few minutes (POST /):
re-publishes jobs left queued or under a lapsed lease, cancels queued jobs past their deadline, and
ends batches that no runner works on any more."""

from __future__ import annotations

from datetime import timedelta

import flask
import functions_framework

from jobs.adapters.http import error_response, json_response
from jobs.adapters.wiring import announcer, batch_store, job_store, publisher
from jobs.errors import DependencyUnavailable, MethodNotAllowed
from jobs.logs import configure_logging
from jobs.reconciler import announce_pending, reconcile_batches
from jobs.reconciler import reconcile as run_reconcile
from jobs.service import utcnow
from jobs.settings import api_settings

configure_logging()  # structured JSON logs from the first request on


@functions_framework.http
def reconcile(request: flask.Request) -> flask.Response:
    if request.method != "POST":
        return error_response(MethodNotAllowed("use POST"))
    settings = api_settings()
    # An operator (or a test) may narrow the thresholds for one run: {"queued_for_seconds": N, ...}.
    overrides = request.get_json(silent=True) or {}
    queued_for = _seconds(overrides.get("queued_for_seconds"), settings.reconcile_queued_seconds)
    lapsed_for = _seconds(overrides.get("lease_lapsed_for_seconds"), settings.reconcile_lease_lapsed_seconds)
    stale_for = _seconds(overrides.get("batch_stale_for_seconds"), settings.reconcile_batch_stale_seconds)
    now = utcnow()
    try:
        report = run_reconcile(job_store(), publisher(), now=now, queued_for=queued_for, lease_lapsed_for=lapsed_for)
        reconcile_batches(batch_store(), now=now, stale_for=stale_for, report=report)
        if (events := announcer()) is not None:
            ended_for = _seconds(overrides.get("announce_after_seconds"), settings.reconcile_announce_after_seconds)
            announce_pending(job_store(), batch_store(), events, now=now, ended_for=ended_for, report=report)
    except DependencyUnavailable as err:
        return error_response(err)
    return json_response(report.as_dict())


def _seconds(value: object, default: float) -> timedelta:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 7 * 86400
    return timedelta(seconds=float(value) if ok else default)  # type: ignore[arg-type]
