"""Announcing the end of a job or batch to its tenant's webhook endpoints (jobs/webhooks.py): the event its
ending write left in `pending_event` becomes deliveries, then the field is cleared — only if it still names
that event. Called by whoever ended the subject, right after; the runner again on a redelivery; the
reconciler for what is left (a process that died in between). Client-free: the ports do the I/O."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from jobs.batches import BatchRecord, BatchStore
from jobs.errors import DependencyUnavailable
from jobs.models import JobRecord
from jobs.ports import JobStore
from jobs.webhooks import Announcer, Subject

log = logging.getLogger(__name__)


OwedT = TypeVar("OwedT", JobRecord, BatchRecord)


def announce_job(announcer: Announcer | None, store: JobStore, record: JobRecord | None) -> bool:
    """Announce the job's pending event (if any) and clear it. True when nothing is left pending; a failure
    is logged and left for later (False): it never fails the caller's own work."""
    if record is None:
        return True
    return _announce(announcer, "jobs", record, store.update, ended_at=record.finished_at)


def announce_batch(announcer: Announcer | None, store: BatchStore, record: BatchRecord | None) -> bool:
    """As announce_job, for a batch."""
    if record is None:
        return True
    return _announce(announcer, "batches", record, store.update,
                     ended_at=getattr(record, f"{record.status.value}_at", None))


def _announce(announcer: Announcer | None, subject: Subject, record: OwedT,
              update: Callable[[str, Callable[[OwedT], OwedT | None]], object], *, ended_at: datetime | None) -> bool:
    event = record.pending_event
    if event is None or announcer is None:
        return event is None
    try:
        sent = announcer.announce(subject=subject, subject_id=record.id, tenant=record.tenant, event_type=event,
                                  status=record.status.value, metadata=record.metadata, ended_at=ended_at)
        update(record.id, lambda current: current.model_copy(update={"pending_event": None})
               if current.pending_event == event else None)
    except DependencyUnavailable as err:
        log.warning("event not announced yet; a redelivery or the reconciler will: %s", err,
                    extra={"job_id": record.id})
        return False
    if sent:
        log.info("event announced", extra={"job_id": record.id, "outcome": event})
    return True
