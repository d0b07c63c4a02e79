"""What became of one push delivery, in the domain's words. The runner's HTTP layer (runner/app.py) alone
turns an outcome into the status code of the ack protocol (CONTRACT §5)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Disposition(Enum):
    DONE = "done"  # finished, or nothing left to do: acknowledge
    FAILED = "failed"  # the job failed for good and its document says why: acknowledge
    RETRY = "retry"  # transient trouble (a dependency, the engine): redeliver after `retry_after`
    SATURATED = "saturated"  # no slot here, or another live delivery holds the job: redeliver after `retry_after`
    UNDELIVERABLE = "undeliverable"  # not a job's message at all: refuse it, so it is dead-lettered for inspection
    UNAUTHENTICATED = "unauthenticated"  # the push's token did not verify: refuse it (forged or misrouted)


@dataclass(frozen=True)
class Outcome:
    disposition: Disposition
    reason: str  # for logs and the response body; never a prompt or an output
    retry_after: float | None = None  # seconds, for RETRY and SATURATED

    @classmethod
    def done(cls, reason: str) -> Outcome:
        return cls(Disposition.DONE, reason)

    @classmethod
    def failed(cls, reason: str) -> Outcome:
        return cls(Disposition.FAILED, reason)

    @classmethod
    def retry(cls, reason: str, *, after: float = 5.0) -> Outcome:
        return cls(Disposition.RETRY, reason, retry_after=max(1.0, after))

    @classmethod
    def saturated(cls, reason: str, *, after: float) -> Outcome:
        return cls(Disposition.SATURATED, reason, retry_after=max(1.0, after))

    @classmethod
    def undeliverable(cls, reason: str) -> Outcome:
        return cls(Disposition.UNDELIVERABLE, reason)

    @classmethod
    def unauthenticated(cls, reason: str) -> Outcome:
        return cls(Disposition.UNAUTHENTICATED, reason)
