"""Pure decisions about a job's life: claim, lease, finish, fail, cancel.

Each function takes the current document and returns the new one (or says why not); adapters apply
them with a precondition, so the decisions are race-free wherever they run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from jobs.models import JobErrorCode, JobErrorInfo, JobRecord, Usage
from jobs.state import JobStatus, transition
from jobs.webhooks import pending_event


class ClaimOutcome(Enum):
    CLAIMED = "claimed"  # this delivery now holds the lease: generate
    FINISHED = "finished"  # nothing left to do: acknowledge
    LEASED = "leased"  # another live delivery holds it: ask for redelivery later
    EXPIRED = "expired"  # its start deadline passed: write the cancelled record, acknowledge


@dataclass(frozen=True)
class Lease:
    """One delivery's hold on a running job, as that delivery last wrote it. Nobody else can take the job
    over before `expires_at`; the holder renews it every `renew_interval` while generating."""

    owner: str
    expires_at: datetime
    seconds: float

    @property
    def renew_interval(self) -> float:
        return self.seconds / 3  # two renewals may fail before the lease lapses

    def extended(self, now: datetime) -> Lease:
        return replace(self, expires_at=now + timedelta(seconds=self.seconds))

    def needs_fence(self, now: datetime) -> bool:
        """Before a write outside Firestore (the result object) the lease must outlast that write: renew
        first when less than half of it is left."""
        return self.expires_at - now <= timedelta(seconds=self.seconds / 2)


@dataclass(frozen=True)
class ClaimDecision:
    outcome: ClaimOutcome
    record: JobRecord | None = None  # the document to write: claimed (CLAIMED) or cancelled (EXPIRED)
    retry_after: float = 0.0  # for LEASED: seconds until the other lease expires
    lease: Lease | None = None  # for CLAIMED: the lease this delivery now holds
    current: JobRecord | None = None  # for FINISHED: the document as it is (its end may still be unannounced)


def decide_claim(
    record: JobRecord, *, owner: str, instance: str, now: datetime, lease_seconds: float
) -> ClaimDecision:
    if record.status.is_final:
        return ClaimDecision(ClaimOutcome.FINISHED, current=record)
    if record.status is JobStatus.RUNNING and record.lease_owner != owner:
        expires = record.lease_expires_at
        if expires is not None and expires > now:
            return ClaimDecision(ClaimOutcome.LEASED, retry_after=(expires - now).total_seconds())
    if record.status is JobStatus.QUEUED and record.deadline_at is not None and now > record.deadline_at:
        return ClaimDecision(ClaimOutcome.EXPIRED, record=expire(record, now=now))
    lease = Lease(owner=owner, expires_at=now + timedelta(seconds=lease_seconds), seconds=lease_seconds)
    claimed = record.model_copy(
        update={
            "status": transition(record.status, JobStatus.RUNNING),
            "started_at": record.started_at or now,
            "attempts": record.attempts + 1,
            "lease_owner": owner,
            "lease_expires_at": lease.expires_at,
            "runner_instance": instance,
        }
    )
    return ClaimDecision(ClaimOutcome.CLAIMED, record=claimed, lease=lease)


def expire(record: JobRecord, *, now: datetime) -> JobRecord:
    """A queued job past its start deadline: cancelled, with the reason."""
    return record.model_copy(
        update={
            **_ending(record, JobStatus.CANCELLED),
            "finished_at": now,
            "finish_reason": "cancelled",
            "error": JobErrorInfo(code=JobErrorCode.DEADLINE_EXCEEDED,
                                  message="the job did not start before its deadline"),
        }
    )


def _ending(record: JobRecord, status: JobStatus) -> dict[str, Any]:
    """The fields of the write that ends a job: its final status, and the webhook event it now owes (the
    outbox, in the same write: jobs/webhooks.py)."""
    return {"status": transition(record.status, status), "pending_event": pending_event("jobs", status.value)}


def holds_lease(record: JobRecord, owner: str) -> bool:
    return record.status is JobStatus.RUNNING and record.lease_owner == owner


def renew(record: JobRecord, lease: Lease) -> JobRecord | None:
    """Write the extended `lease`, only while its owner still holds the job (None: lost to a cancel or a
    takeover, and the generation must stop)."""
    if not holds_lease(record, lease.owner):
        return None
    return record.model_copy(update={"lease_expires_at": lease.expires_at})


def release(record: JobRecord, *, owner: str, now: datetime) -> JobRecord | None:
    """Hand a held job back at once (retryable trouble, shutdown), so the next delivery need not wait for
    the lease to lapse. None if `owner` no longer holds it."""
    if not holds_lease(record, owner):
        return None
    return record.model_copy(update={"lease_expires_at": now})


def stream_output(record: JobRecord, *, owner: str, output: str) -> JobRecord | None:
    """Partial output of a `stream` job, written while the lease holder generates."""
    if not holds_lease(record, owner) or record.output == output:
        return None
    return record.model_copy(update={"output": output})


@dataclass(frozen=True)
class Completion:
    output: str
    finish_reason: str
    usage: Usage
    result_uri: str | None
    metrics: dict[str, float]


def complete(record: JobRecord, *, owner: str, now: datetime, completion: Completion) -> JobRecord | None:
    """`running` → `succeeded`, only for the lease holder (None otherwise: someone else owns it)."""
    if not holds_lease(record, owner):
        return None
    return record.model_copy(
        update={
            **_ending(record, JobStatus.SUCCEEDED),
            "finished_at": now,
            "output": completion.output,
            "finish_reason": completion.finish_reason,
            "usage": completion.usage,
            "result_uri": completion.result_uri,
            "metrics": {**record.metrics, **completion.metrics},
            "lease_owner": None,
            "lease_expires_at": None,
        }
    )


def fail(record: JobRecord, *, now: datetime, code: JobErrorCode, message: str,
         owner: str | None = None) -> JobRecord | None:
    """Mark failed. With `owner`, only while that delivery holds the lease; finished jobs stay as they are."""
    if record.status.is_final or (owner is not None and not holds_lease(record, owner)):
        return None
    return record.model_copy(
        update={
            **_ending(record, JobStatus.FAILED),
            "finished_at": now,
            "error": JobErrorInfo(code=code, message=message),
            "lease_owner": None,
            "lease_expires_at": None,
        }
    )


def cancel(record: JobRecord, *, now: datetime) -> JobRecord | None:
    """Cancel a queued or running job; a finished job is left unchanged (None).

    A running job keeps its lease fields: the delivery that holds it sees the change, aborts the
    generation and records the partial output with `record_partial`."""
    if record.status.is_final:
        return None
    running = record.status is JobStatus.RUNNING
    return record.model_copy(
        update={
            **_ending(record, JobStatus.CANCELLED),
            "finished_at": now,
            "finish_reason": "cancelled",
            "lease_owner": record.lease_owner if running else None,
            "lease_expires_at": record.lease_expires_at if running else None,
        }
    )


def record_partial(record: JobRecord, *, owner: str, completion: Completion) -> JobRecord | None:
    """After a cancel, the delivery that was generating keeps what it had generated."""
    if record.status is not JobStatus.CANCELLED or record.lease_owner != owner:
        return None
    return record.model_copy(
        update={
            "output": completion.output,
            "usage": completion.usage,
            "metrics": {**record.metrics, **completion.metrics},
            "lease_owner": None,
            "lease_expires_at": None,
        }
    )


def dead_letter(record: JobRecord, *, now: datetime, delivery_attempts: int | None) -> JobRecord | None:
    """Pub/Sub gave up on the job's message. Finished jobs and jobs held by a live lease (a duplicate
    message ran out of attempts while another delivery works on it) stay as they are."""
    if record.status.is_final:
        return None
    if record.status is JobStatus.RUNNING and record.lease_expires_at is not None and record.lease_expires_at > now:
        return None
    attempts = f"after {delivery_attempts} delivery attempts" if delivery_attempts else "after its delivery attempts"
    return fail(record, now=now, code=JobErrorCode.DEAD_LETTERED, message=f"the job could not be processed {attempts}")
