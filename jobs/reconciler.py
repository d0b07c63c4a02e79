"""The reconciler: finds jobs the pipeline lost track of and puts them back on the queue.

- queued for longer than a threshold: the publish after the Firestore write may have been lost
  (a crash between the two, or a publish that failed and whose undo failed too);
- running under a lease that lapsed long ago: the runner died and no redelivery came.

Re-publishing is safe: a duplicate message finds the job finished (ack) or leased (retry later).
Queued jobs past their start deadline are cancelled instead.

Batches nothing works on any more (no progress written for a long time) are ended: `failed` with
`runner_lost` (a rerun resumes them), or `cancelled` if a cancel was waiting for a runner.

Jobs and batches that ended without their webhook event announced (the process that ended them died first,
or Pub/Sub was down) are announced (`announce_pending`): the outbox's sweep, jobs/webhooks.py.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from opentelemetry.trace import SpanKind

from jobs import batches, lifecycle, tracing
from jobs.announce import announce_batch, announce_job
from jobs.batch_state import BatchStatus
from jobs.batches import BatchStore
from jobs.errors import DependencyUnavailable
from jobs.models import JobErrorCode, JobRecord
from jobs.ports import JobStore, Publisher
from jobs.state import JobStatus
from jobs.webhooks import Announcer

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    examined: int = 0
    republished: int = 0
    expired: int = 0
    failed: int = 0  # no request copy left to republish from
    errors: int = 0
    batches_failed: int = 0  # ended `failed`/runner_lost
    batches_cancelled: int = 0  # a cancel that no runner was there to finish
    batches_expired: int = 0  # past their completion window, nothing working on them
    announced: int = 0  # webhook events a writer had left pending

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def reconcile(
    store: JobStore,
    publisher: Publisher,
    *,
    now: datetime,
    queued_for: timedelta = timedelta(minutes=5),
    lease_lapsed_for: timedelta = timedelta(minutes=2),
    limit: int = 500,
) -> ReconcileReport:
    report = ReconcileReport()
    stale = store.find_stale(queued_before=now - queued_for, lease_expired_before=now - lease_lapsed_for, limit=limit)
    for record in stale:
        report.examined += 1
        # At most one re-publish per period: under a backlog a queued job's message may simply be
        # waiting its turn, and re-publishing it every run would multiply the backlog.
        if record.republished_at is not None and now - record.republished_at < queued_for:
            continue
        try:
            if record.status is JobStatus.QUEUED and record.deadline_at is not None and now > record.deadline_at:
                _, changed = store.update(record.id, lambda current: _expire_if_queued(current, now))
                report.expired += changed
                continue
            message = store.get_message(record.id)
            if message is None:
                store.update(record.id, lambda current: _fail_lost(current, now))
                report.failed += 1
                continue
            _, marked = store.update(record.id, functools.partial(_mark_republished, seen=record, now=now))
            if not marked:
                continue  # it moved on since the query: nothing to do
            # The re-published message continues the job's own trace, so its runner spans join it.
            with tracing.job_span("republish", record.id, parent=tracing.continue_trace(record.trace_id),
                                  kind=SpanKind.PRODUCER):
                message.trace_headers = tracing.inject()
                publisher.publish(message)
            report.republished += 1
            log.info("republished", extra={"job_id": record.id, "status": record.status.value})
        except DependencyUnavailable:
            report.errors += 1
            log.warning("could not reconcile", extra={"job_id": record.id})
    return report


def announce_pending(jobs: JobStore, batch_store: BatchStore, announcer: Announcer, *, now: datetime,
                     ended_for: timedelta = timedelta(seconds=30), limit: int = 500,
                     report: ReconcileReport | None = None) -> ReconcileReport:
    """Announce what ended at least `ended_for` ago (its writer had that long to announce it itself) with its
    event still pending."""
    report = report or ReconcileReport()
    for record in jobs.find_unannounced(ended_before=now - ended_for, limit=limit):
        report.announced += announce_job(announcer, jobs, record)
    for batch in batch_store.find_unannounced(ended_before=now - ended_for, limit=limit):
        report.announced += announce_batch(announcer, batch_store, batch)
    return report


def _fail_lost(current: JobRecord, now: datetime) -> JobRecord | None:
    return lifecycle.fail(current, now=now, code=JobErrorCode.REQUEST_LOST,
                          message="the job's request could not be found")


def _expire_if_queued(current: JobRecord, now: datetime) -> JobRecord | None:
    if current.status is not JobStatus.QUEUED:
        return None
    return lifecycle.expire(current, now=now)


def _mark_republished(current: JobRecord, *, seen: JobRecord, now: datetime) -> JobRecord | None:
    """Only if the job is still as the query saw it (same status and lease)."""
    if current.status is not seen.status or current.lease_expires_at != seen.lease_expires_at:
        return None
    return current.model_copy(update={"republished_at": now})


def reconcile_batches(
    store: BatchStore, *, now: datetime, stale_for: timedelta = timedelta(hours=1), limit: int = 100,
    report: ReconcileReport | None = None,
) -> ReconcileReport:
    """End the batches nothing works on any more (see `batches.abandon`)."""
    report = report or ReconcileReport()
    for record in store.find_stale(updated_before=now - stale_for, limit=limit):
        report.examined += 1
        try:
            ended, changed = store.update(record.id, lambda current: batches.abandon(current, now=now,
                                                                                     stale_for=stale_for))
        except DependencyUnavailable:
            report.errors += 1
            log.warning("could not reconcile", extra={"batch_id": record.id})
            continue
        if changed and ended is not None:
            if ended.status is BatchStatus.CANCELLED:
                report.batches_cancelled += 1
            elif ended.status is BatchStatus.EXPIRED:
                report.batches_expired += 1
            else:
                report.batches_failed += 1
            log.warning("batch abandoned", extra={"batch_id": record.id, "status": ended.status.value})
    return report
