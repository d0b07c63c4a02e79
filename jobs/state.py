"""The job state machine. Every status change in the platform goes through `transition()`."""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    QUEUED = "queued"  # stored and published; no runner holds it
    RUNNING = "running"  # a runner holds a live lease and is generating
    SUCCEEDED = "succeeded"  # output written to Firestore and GCS; final
    FAILED = "failed"  # permanently failed or dead-lettered; `error` says why; final
    CANCELLED = "cancelled"  # cancelled by the client (or its deadline); final

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    # running -> running is a takeover of an expired lease by a new delivery.
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"job cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


def transition(current: JobStatus, target: JobStatus) -> JobStatus:
    """Return `target` if the move is allowed, else raise InvalidTransition."""
    if target not in _ALLOWED[current]:
        raise InvalidTransition(current, target)
    return target
