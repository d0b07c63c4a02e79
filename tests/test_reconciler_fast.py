"""Fast tier: the reconciler's decisions over in-memory ports (tests/memory.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobs import lifecycle
from jobs.catalog import ModelCatalog, ModelSpec
from jobs.models import JobErrorCode, JobRequest
from jobs.quotas import Quota
from jobs.reconciler import reconcile
from jobs.service import JobService
from jobs.state import JobStatus
from tests.memory import InMemoryJobStore, InMemoryPublisher

CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def _submitted(store: InMemoryJobStore, publisher: InMemoryPublisher, **body: object) -> str:
    service = JobService(store=store, publisher=publisher, catalog=ModelCatalog([ModelSpec(id="tiny-llama")]),
                         quota=Quota(submissions_per_minute=0, queued_jobs=0), max_prompt_chars_per_token=16,
                         clock=lambda: CREATED)
    view, _ = service.submit(JobRequest.model_validate({"prompt": "p", **body}), tenant="t", idempotency_key=None)
    return view.id


def test_stale_jobs_are_republished_once_per_period_and_lost_ones_end() -> None:
    store, publisher = InMemoryJobStore(), InMemoryPublisher()
    queued = _submitted(store, publisher)
    lapsed = _submitted(store, publisher)
    lost = _submitted(store, publisher)
    late = _submitted(store, publisher, deadline_seconds=60)
    claim = lifecycle.decide_claim(store.records[lapsed], owner="d", instance="i", now=CREATED, lease_seconds=30)
    assert claim.record is not None
    store.records[lapsed] = claim.record
    del store.messages[lost]
    publisher.published.clear()

    now = CREATED + timedelta(hours=1)
    report = reconcile(store, publisher, now=now)
    assert (report.republished, report.failed, report.expired) == (2, 1, 1)
    assert sorted(m.job_id for m in publisher.published) == sorted([queued, lapsed])
    lost_record, late_record = store.records[lost], store.records[late]
    assert lost_record.error is not None and lost_record.error.code is JobErrorCode.REQUEST_LOST
    assert late_record.status is JobStatus.CANCELLED and late_record.error is not None
    assert late_record.error.code is JobErrorCode.DEADLINE_EXCEEDED

    # Within the same period, nothing is re-published again: a backlog is not multiplied.
    again = reconcile(store, publisher, now=now + timedelta(minutes=1))
    assert again.republished == 0 and len(publisher.published) == 2
