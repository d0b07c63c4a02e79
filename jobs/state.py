"""The job state machine. Every status change in the platform goes through `transition()`."""

from __future__ import annotations

from enum import Enum
from typing import Generic, TypeVar

S = TypeVar("S", bound=Enum)


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


class InvalidTransition(Exception):
    def __init__(self, what: str, current: Enum, target: Enum) -> None:
        super().__init__(f"{what} cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


class TransitionTable(Generic[S]):
    """The allowed moves of one state machine (jobs here, batches in jobs/batch_state.py)."""

    def __init__(self, what: str, allowed: dict[S, frozenset[S]]) -> None:
        self._what = what
        self._allowed = allowed

    def allows(self, current: S, target: S) -> bool:
        return target in self._allowed[current]

    def __call__(self, current: S, target: S) -> S:
        """Return `target` if the move is allowed, else raise InvalidTransition."""
        if not self.allows(current, target):
            raise InvalidTransition(self._what, current, target)
        return target


transition = TransitionTable("job", {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    # running -> running is a takeover of an expired lease by a new delivery.
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
})
