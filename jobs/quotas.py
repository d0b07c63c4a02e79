"""Per-tenant quotas: submissions per minute and jobs waiting in the queue.

Counted with Firestore aggregation queries over the tenant's own jobs, so no counter document is
written on every request (a single hot document sustains about one write per second). A count costs
O(jobs it counts), so it is not made per submission: each instance counts a tenant at most once per
`refresh_seconds` and adds what it accepted itself since. Under a burst the limit is approximate (an
instance sees the others' submissions up to `refresh_seconds` late), which a quota can afford.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from jobs.errors import QuotaExceeded
from jobs.ports import JobStore


@dataclass(frozen=True)
class Quota:
    submissions_per_minute: int = 600
    queued_jobs: int = 10_000


@dataclass
class _Counts:
    counted_at: float  # monotonic
    recent: int  # created in the minute before the count
    queued: int
    accepted_since: int = 0  # accepted by this instance after the count


class QuotaGuard:
    """Checks a tenant's quota before a submission, with counts at most `refresh_seconds` old."""

    def __init__(self, store: JobStore, quota: Quota, *, refresh_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._quota = quota
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, _Counts] = {}
        self._counting: dict[str, threading.Lock] = {}

    def check(self, tenant: str, *, now: datetime) -> None:
        """Raises QuotaExceeded (429 with Retry-After) when the tenant is over a limit."""
        q = self._quota
        if q.submissions_per_minute <= 0 and q.queued_jobs <= 0:
            return
        counts = self._current(tenant, now)
        if 0 < q.submissions_per_minute <= counts.recent + counts.accepted_since:
            raise QuotaExceeded(f"over {q.submissions_per_minute} submissions per minute; retry later",
                                code="rate_limit_exceeded", retry_after=10)
        queued = counts.queued + counts.accepted_since
        if 0 < q.queued_jobs <= queued:
            raise QuotaExceeded(
                f"{queued} jobs are already queued (the limit is {q.queued_jobs}); retry when some have run",
                code="queue_quota_exceeded", retry_after=30)

    def accepted(self, tenant: str) -> None:
        """A submission of the tenant's was stored: count it until the next count sees it."""
        with self._lock:
            counts = self._counts.get(tenant)
            if counts is not None:
                counts.accepted_since += 1

    def _current(self, tenant: str, now: datetime) -> _Counts:
        with self._lock:
            counts = self._counts.get(tenant)
            counting = self._counting.setdefault(tenant, threading.Lock())
        if counts is not None and self._clock() - counts.counted_at < self._refresh_seconds:
            return counts
        # One count per tenant at a time; meanwhile the others go on with the previous counts.
        if not counting.acquire(blocking=counts is None):
            assert counts is not None
            return counts
        try:
            with self._lock:
                latest = self._counts.get(tenant)
            if latest is not None and self._clock() - latest.counted_at < self._refresh_seconds:
                return latest  # counted by another request while this one waited
            counted_at = self._clock()
            q = self._quota
            recent = (self._store.count(tenant, created_since=now - timedelta(minutes=1))
                      if q.submissions_per_minute > 0 else 0)
            queued = self._store.count(tenant, status="queued") if q.queued_jobs > 0 else 0
            fresh = _Counts(counted_at, recent, queued)
            with self._lock:
                if len(self._counts) > 10_000:  # bounded: a long-lived instance serving many tenants
                    self._counts.clear()
                    self._counting.clear()  # a request holding an old lock only releases it
                self._counts[tenant] = fresh
            return fresh
        finally:
            counting.release()
