"""The batch state machine. Every status change of a `batches/{id}` document goes through
`transition()` (via the decisions in jobs/batches.py), as every job's goes through jobs/state.py."""

from __future__ import annotations

from enum import Enum

from jobs.state import TransitionTable


class BatchStatus(str, Enum):
    VALIDATING = "validating"  # created; the input is being read and checked (or the runner has not started)
    IN_PROGRESS = "in_progress"  # requests are running; request_counts grow
    FINALIZING = "finalizing"  # all requests done; output and error files are being completed
    COMPLETED = "completed"  # output.jsonl and errors.jsonl are final; final (a rerun may reopen it)
    FAILED = "failed"  # the input could not be processed, or its runner was lost (`error` says which); a rerun resumes it
    CANCELLING = "cancelling"  # cancel asked: no new requests start, running ones finish
    CANCELLED = "cancelled"  # stopped early; finished lines are kept, the rest are `batch_cancelled` errors; final
    EXPIRED = "expired"  # not finished by expires_at; finished lines are kept, the rest are `batch_expired` errors; final

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def stops_new_requests(self) -> bool:
        return self in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)


FINAL_STATUSES = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED})
# A rerun on the same output resumes these (skips what is done, retries the rest): they go back to validating.
RESUMABLE = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED})

# Staying in the same status is not a transition (a progress write); callers do not route it through here.
# Expiry: the runner ends a batch it is running `expired` through finalizing (its files are written then); the
# reconciler ends one nothing works on from wherever it stopped.
transition = TransitionTable("batch", {
    BatchStatus.VALIDATING: frozenset({BatchStatus.IN_PROGRESS, BatchStatus.FAILED, BatchStatus.CANCELLING,
                                       BatchStatus.EXPIRED}),
    BatchStatus.IN_PROGRESS: frozenset({BatchStatus.FINALIZING, BatchStatus.FAILED, BatchStatus.CANCELLING,
                                        BatchStatus.EXPIRED}),
    # finalizing -> in_progress: a retried task (its container was stopped while finalizing) runs again.
    BatchStatus.FINALIZING: frozenset({BatchStatus.IN_PROGRESS, BatchStatus.COMPLETED, BatchStatus.FAILED,
                                       BatchStatus.CANCELLING, BatchStatus.EXPIRED}),
    # A cancel always ends cancelled: from the runner when its requests are done, or from the reconciler.
    BatchStatus.CANCELLING: frozenset({BatchStatus.CANCELLED}),
    BatchStatus.COMPLETED: frozenset({BatchStatus.VALIDATING}),
    BatchStatus.FAILED: frozenset({BatchStatus.VALIDATING}),
    BatchStatus.CANCELLED: frozenset(),
    BatchStatus.EXPIRED: frozenset(),
})
