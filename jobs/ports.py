"""Ports: what the domain needs from storage and messaging. Adapters in `jobs.adapters` implement
them over Firestore, Pub/Sub and Cloud Storage; every method may raise DependencyUnavailable."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any, Protocol

from jobs.models import JobMessage, JobRecord

# A pure function from the current document to the new one, or None for "no change".
Mutation = Callable[[JobRecord], JobRecord | None]


def watch_states(next_state: Callable[[JobRecord | None, float], JobRecord | None], *, timeout: float,
                 idle: float) -> Generator[JobRecord | None, None, None]:
    """JobStore.watch for any store: `next_state(last, wait)` waits up to `wait` seconds for a state other than
    `last` and returns the latest it has (None: no document). Yields each new state, None after an idle
    interval without one, and stops after a final state or at the timeout."""
    deadline = time.monotonic() + timeout
    last: JobRecord | None = None
    while (left := deadline - time.monotonic()) > 0:
        record = next_state(last, min(idle, left))
        if record is None or record == last:
            yield None
            continue
        last = record
        yield record
        if record.status.is_final:
            return


class JobStore(Protocol):
    def create(self, record: JobRecord, message: JobMessage) -> bool:
        """Create `jobs/{id}` and its request copy atomically. False if the id already exists."""
        ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def delete(self, job_id: str) -> None:
        """Remove a job and its request copy (undo of a submit whose publish failed)."""
        ...

    def update(self, job_id: str, mutate: Mutation) -> tuple[JobRecord | None, bool]:
        """Apply `mutate` to the current document with a precondition on its update time,
        re-reading and re-applying on a concurrent change. Returns (document after, changed);
        (None, False) if the job does not exist."""
        ...

    def wait_until_final(self, job_id: str, timeout: float) -> JobRecord | None:
        """Watch the document (a listener, not polling) until it is final or `timeout` passes;
        return the last state seen."""
        ...

    def watch(self, job_id: str, *, timeout: float, idle: float) -> Generator[JobRecord | None, None, None]:
        """Each new state of the document as it changes (the current one first), until a final one or
        `timeout`; None after every `idle` seconds without a change (for a stream's heartbeat). Close the
        iterator to stop listening early."""
        ...

    def get_message(self, job_id: str) -> JobMessage | None:
        """The durable copy of the job's message (for re-publishing)."""
        ...

    def watch_cancelled(self, instance: str, on_cancelled: Callable[[str, str], None]) -> Callable[[], None]:
        """Listen for cancellations of the jobs a runner instance holds; returns the unsubscribe."""
        ...

    def find_stale(self, *, queued_before: datetime, lease_expired_before: datetime, limit: int) -> list[JobRecord]:
        ...

    def find_unannounced(self, *, ended_before: datetime, limit: int) -> list[JobRecord]:
        """Finished jobs whose webhook event is still pending (jobs/webhooks.py), ended before `ended_before`."""
        ...

    def count(self, tenant: str, *, status: str | None = None, created_since: datetime | None = None) -> int:
        """How many of the tenant's jobs match (for quotas)."""
        ...


class Publisher(Protocol):
    def publish(self, message: JobMessage) -> str:
        """Publish and wait for the server's ack; return the message id."""
        ...


class ResultStore(Protocol):
    def write_result(self, job_id: str, body: dict[str, Any]) -> str:
        """Write `results/<job id>.json` (overwriting: a retried finish replaces, never duplicates)
        and return its gs:// URI."""
        ...
