"""What the Firestore adapters share: bounded calls, the errors that mean "unavailable", and the
optimistic conditional update every state change goes through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import firestore

from jobs.errors import DependencyUnavailable

# Every call is bounded: an unreachable Firestore must turn into a retryable error well inside a
# push's ack deadline, not a request hanging on the client's default minute-long retry.
TIMEOUT = 10.0
RETRY = Retry(timeout=TIMEOUT, initial=0.1, maximum=2.0)
UNAVAILABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.RetryError,
               gexc.Aborted, gexc.Unknown, gexc.ResourceExhausted, gexc.TooManyRequests)

RecordT = TypeVar("RecordT")


def conditional_update(
    client: firestore.Client,
    ref: Any,
    mutate: Callable[[RecordT], RecordT | None],
    *,
    parse: Callable[[Any], RecordT],
    dump: Callable[[RecordT], dict[str, Any]],
    attempts: int,
    what: str,
) -> tuple[RecordT | None, bool]:
    """Apply `mutate` to the document with a write preconditioned on its update time (lock-free:
    the emulator's transaction locks time out under concurrency), re-reading and deciding again
    when it changed under us. Returns (document after, changed); (None, False) if it does not exist.
    Raises DependencyUnavailable when Firestore is unreachable or the document keeps changing."""
    try:
        for _ in range(attempts):
            snapshot = ref.get(timeout=TIMEOUT, retry=RETRY)
            if not snapshot.exists:
                return None, False
            current = parse(snapshot)
            new = mutate(current)
            if new is None:
                return current, False
            before, after = dump(current), dump(new)
            changes = {k: v for k, v in after.items() if before.get(k) != v}
            if not changes:
                return current, False
            try:
                ref.update(changes, option=client.write_option(last_update_time=snapshot.update_time),
                           timeout=TIMEOUT, retry=RETRY)
                return new, True
            except (gexc.FailedPrecondition, gexc.NotFound):
                continue  # changed (or deleted) under us: decide again on the fresh state
    except UNAVAILABLE as err:
        raise DependencyUnavailable(f"the {what} store is unavailable") from err
    raise DependencyUnavailable(f"{what} {ref.id} is changing too often to update; retry")
