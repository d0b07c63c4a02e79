"""QuotaGuard (jobs/quotas.py) without emulators: the store is counted at most once per refresh interval
per tenant, whatever the submission rate, and what this instance accepted meanwhile still counts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobs.errors import QuotaExceeded
from jobs.quotas import Quota, QuotaGuard

NOW = datetime(2026, 12, 2, tzinfo=UTC)


class CountingStore:
    """In-memory stand-in for the job store's aggregation counts (a port implementation)."""

    def __init__(self, recent: int = 0, queued: int = 0) -> None:
        self.recent, self.queued, self.calls = recent, queued, 0

    def count(self, tenant: str, *, status: str | None = None, created_since: datetime | None = None) -> int:
        self.calls += 1
        return self.queued if status == "queued" else self.recent


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counts_once_per_interval_however_many_submissions() -> None:
    store, clock = CountingStore(), Clock()
    guard = QuotaGuard(store, Quota(submissions_per_minute=1000, queued_jobs=1000), clock=clock)  # type: ignore[arg-type]
    for _ in range(200):
        guard.check("t", now=NOW)
        guard.accepted("t")
    assert store.calls == 2  # one count of each kind
    clock.now += 1.5
    guard.check("t", now=NOW)
    assert store.calls == 4


def test_what_this_instance_accepted_since_the_count_is_counted() -> None:
    store, clock = CountingStore(recent=8), Clock()
    guard = QuotaGuard(store, Quota(submissions_per_minute=10, queued_jobs=0), clock=clock)  # type: ignore[arg-type]
    for _ in range(2):
        guard.check("t", now=NOW)
        guard.accepted("t")
    with pytest.raises(QuotaExceeded) as over:
        guard.check("t", now=NOW)
    assert over.value.code == "rate_limit_exceeded" and over.value.retry_after
    assert store.calls == 1


def test_the_queued_limit_and_tenants_apart() -> None:
    store, clock = CountingStore(queued=5), Clock()
    guard = QuotaGuard(store, Quota(submissions_per_minute=0, queued_jobs=5), clock=clock)  # type: ignore[arg-type]
    with pytest.raises(QuotaExceeded) as over:
        guard.check("a", now=NOW)
    assert over.value.code == "queue_quota_exceeded"
    store.queued = 0
    guard.check("b", now=NOW)  # another tenant: counted on its own


def test_no_limits_no_counts() -> None:
    store = CountingStore()
    QuotaGuard(store, Quota(submissions_per_minute=0, queued_jobs=0)).check("t", now=NOW)  # type: ignore[arg-type]
    assert store.calls == 0
