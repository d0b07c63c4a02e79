"""Per-tenant quotas: submissions per minute and jobs waiting in the queue.

Counted with Firestore aggregation queries over the tenant's own jobs, so no counter document is
written on every request (a single hot document sustains about one write per second). The count
is approximate under a burst of simultaneous submissions (each sees the others only once they
are written), which a quota can afford.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from jobs.errors import QuotaExceeded
from jobs.ports import JobStore


@dataclass(frozen=True)
class Quota:
    submissions_per_minute: int = 600
    queued_jobs: int = 10_000


def check_quota(store: JobStore, tenant: str, *, quota: Quota, now: datetime) -> None:
    """Raises QuotaExceeded (429 with Retry-After) when the tenant is over a limit."""
    if quota.submissions_per_minute > 0:
        recent = store.count(tenant, created_since=now - timedelta(minutes=1))
        if recent >= quota.submissions_per_minute:
            raise QuotaExceeded(
                f"over {quota.submissions_per_minute} submissions per minute; retry later",
                code="rate_limit_exceeded", retry_after=10,
            )
    if quota.queued_jobs > 0:
        queued = store.count(tenant, status="queued")
        if queued >= quota.queued_jobs:
            raise QuotaExceeded(
                f"{queued} jobs are already queued (the limit is {quota.queued_jobs}); retry when some have run",
                code="queue_quota_exceeded", retry_after=30,
            )
