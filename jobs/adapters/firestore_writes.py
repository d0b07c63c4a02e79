"""What the Firestore adapters share: bounded calls, the errors that mean "unavailable", and the
optimistic conditional update every state change goes through."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.cloud import firestore

from jobs.adapters.google_errors import CLIENT_ERRORS
from jobs.errors import DependencyUnavailable

# Every call is bounded: an unreachable Firestore must turn into a retryable error well inside a
# push's ack deadline, not a request hanging on the client's default minute-long retry.
TIMEOUT = 10.0
# The transient classes are retried within that bound (the client's default retries three of them; under
# load the emulator also answers Cancelled and Aborted, and a write retried after it landed is harmless:
# every write here is a create or preconditioned, so a replay fails its precondition instead of applying twice).
TRANSIENT = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.Aborted,
             gexc.Cancelled, gexc.Unknown, gexc.TooManyRequests)  # TooManyRequests: ResourceExhausted too
RETRY = Retry(predicate=if_exception_type(*TRANSIENT), timeout=TIMEOUT, initial=0.1, maximum=2.0)

RecordT = TypeVar("RecordT")


class OwnWrites(Generic[RecordT]):
    """The version of each document this process last wrote itself: its content and update time, so
    that the next change it makes (a runner's finish after its claim) is written preconditioned on that
    version without reading the document first — one round trip fewer on a job's critical path. A version
    is only a guess: a write on it that fails its precondition reads the document as usual."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._versions: OrderedDict[str, tuple[Any, RecordT]] = OrderedDict()

    def get(self, path: str) -> tuple[Any, RecordT] | None:
        with self._lock:
            return self._versions.get(path)

    def put(self, path: str, update_time: Any, record: RecordT) -> None:
        with self._lock:
            self._versions[path] = (update_time, record)
            self._versions.move_to_end(path)
            while len(self._versions) > self._size:
                self._versions.popitem(last=False)

    def drop(self, path: str) -> None:
        with self._lock:
            self._versions.pop(path, None)


def conditional_update(
    client: firestore.Client,
    ref: Any,
    mutate: Callable[[RecordT], RecordT | None],
    *,
    parse: Callable[[Any], RecordT],
    dump: Callable[[RecordT], dict[str, Any]],
    attempts: int,
    what: str,
    own_writes: OwnWrites[RecordT] | None = None,
) -> tuple[RecordT | None, bool]:
    """Apply `mutate` to the document with a write preconditioned on its update time (lock-free:
    the emulator's transaction locks time out under concurrency), re-reading and deciding again
    when it changed under us. Returns (document after, changed); (None, False) if it does not exist.
    Raises DependencyUnavailable when Firestore is unreachable or the document keeps changing.
    With `own_writes`, the first attempt starts from the version this process wrote last, if any."""
    known = own_writes.get(ref.path) if own_writes is not None else None
    try:
        for _ in range(attempts):
            if known is not None:
                update_time, current = known
            else:
                snapshot = ref.get(timeout=TIMEOUT, retry=RETRY)
                if not snapshot.exists:
                    return None, False
                update_time, current = snapshot.update_time, parse(snapshot)
            new = mutate(current)
            changes: dict[str, Any] = {}
            if new is not None:
                before, after = dump(current), dump(new)
                changes = {k: v for k, v in after.items() if before.get(k) != v}
            if not changes:
                if known is not None:  # "nothing to do" on a guess proves nothing: decide on the document
                    known = None
                    continue
                return current, False
            assert new is not None
            try:
                result = ref.update(changes, option=client.write_option(last_update_time=update_time),
                                    timeout=TIMEOUT, retry=RETRY)
            except (gexc.FailedPrecondition, gexc.NotFound):
                known = None
                if own_writes is not None:
                    own_writes.drop(ref.path)
                continue  # changed (or deleted) under us: decide again on the fresh state
            if own_writes is not None:
                own_writes.put(ref.path, result.update_time, new)
            return new, True
    except CLIENT_ERRORS as err:
        raise DependencyUnavailable(f"the {what} store is unavailable") from err
    raise DependencyUnavailable(f"{what} {ref.id} is changing too often to update; retry")
