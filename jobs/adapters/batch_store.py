"""BatchStore over Firestore (`batches/{id}`), and the throttle that keeps progress writes to about one
per second per document (Firestore's sustained per-document rate)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from jobs.adapters.firestore_writes import RETRY, TIMEOUT, conditional_update
from jobs.adapters.google_errors import CLIENT_ERRORS
from jobs.batch_state import BatchStatus
from jobs.batches import BatchRecord, Mutation
from jobs.constants import BATCHES_COLLECTION
from jobs.errors import DependencyUnavailable
from jobs.webhooks import BATCH_EVENTS

log = logging.getLogger(__name__)

_UPDATE_ATTEMPTS = 10


class FirestoreBatchStore:
    def __init__(self, client: firestore.Client, *, collection: str = BATCHES_COLLECTION) -> None:
        self._client = client
        self._batches = client.collection(collection)

    def create(self, record: BatchRecord) -> bool:
        try:
            self._batches.document(record.id).create(record.to_document(), timeout=TIMEOUT, retry=RETRY)
        except gexc.Conflict:
            return False
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the batch store is unavailable") from err
        return True

    def get(self, batch_id: str) -> BatchRecord | None:
        try:
            snapshot = self._batches.document(batch_id).get(timeout=TIMEOUT, retry=RETRY)
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the batch store is unavailable") from err
        return _record(snapshot.id, snapshot.to_dict()) if snapshot.exists else None

    def delete(self, batch_id: str) -> None:
        try:
            self._batches.document(batch_id).delete(timeout=TIMEOUT, retry=RETRY)
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the batch store is unavailable") from err

    def update(self, batch_id: str, mutate: Mutation) -> tuple[BatchRecord | None, bool]:
        return conditional_update(
            self._client, self._batches.document(batch_id), mutate,
            parse=lambda snapshot: _record(snapshot.id, snapshot.to_dict()), dump=lambda r: r.to_document(),
            attempts=_UPDATE_ATTEMPTS, what="batch",
        )

    def find_stale(self, *, updated_before: datetime, limit: int) -> list[BatchRecord]:
        # status IN [...] AND updated_at < T: the composite index (status, updated_at) of pulumi/llmq_infra/store.py.
        open_statuses = [s.value for s in BatchStatus if not s.is_final]
        query = (self._batches.where(filter=FieldFilter("status", "in", open_statuses))
                 .where(filter=FieldFilter("updated_at", "<", updated_before)).limit(limit))
        try:
            return [_record(s.id, s.to_dict()) for s in query.stream(timeout=TIMEOUT, retry=RETRY)]
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the batch store is unavailable") from err

    def find_unannounced(self, *, ended_before: datetime, limit: int) -> list[BatchRecord]:
        # pending_event IN [...] AND updated_at < T: a composite index of pulumi/llmq_infra/store.py.
        query = (self._batches.where(filter=FieldFilter("pending_event", "in", list(BATCH_EVENTS)))
                 .where(filter=FieldFilter("updated_at", "<", ended_before)).limit(limit))
        try:
            return [_record(s.id, s.to_dict()) for s in query.stream(timeout=TIMEOUT, retry=RETRY)]
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the batch store is unavailable") from err

    def list(self, tenant: str, *, limit: int, after: BatchRecord | None) -> tuple[list[BatchRecord], bool]:
        # tenant == T ordered by created_at, then id, both descending: an index of pulumi/llmq_infra/store.py.
        descending = firestore.Query.DESCENDING
        query = (self._batches.where(filter=FieldFilter("tenant", "==", tenant))
                 .order_by("created_at", direction=descending).order_by(FieldPath.document_id(), direction=descending))
        if after is not None:
            query = query.start_after({"created_at": after.created_at,
                                       FieldPath.document_id(): self._batches.document(after.id)})
        try:
            records = [_record(s.id, s.to_dict()) for s in query.limit(limit + 1).stream(timeout=TIMEOUT, retry=RETRY)]
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the batch store is unavailable") from err
        return records[:limit], len(records) > limit

    def watch(self, batch_id: str, on_change: Callable[[BatchRecord], None]) -> Callable[[], None]:
        def on_snapshot(snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
            for snapshot in snapshots:
                if snapshot.exists:
                    try:
                        on_change(_record(snapshot.id, snapshot.to_dict()))
                    except Exception:  # a listener callback must never kill the watch thread
                        log.exception("batch listener callback failed")

        watch = self._batches.document(batch_id).on_snapshot(on_snapshot)
        return watch.unsubscribe


def _record(batch_id: str, doc: dict[str, Any] | None) -> BatchRecord:
    return BatchRecord.model_validate({"id": batch_id, **(doc or {})})


class ThrottledProgress:
    """Coalesces progress writes: `offer()` writes at once if the last write is older than `interval`, else
    remembers the value for the next offer or `flush()`. Thread-safe; a failed write is retried later."""

    def __init__(self, write: Callable[[Any], None], *, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: Any = None
        self._has_pending = False
        self._last_write = float("-inf")
        self.writes = 0

    def offer(self, value: Any) -> bool:
        """Write `value` if the interval has passed since the last write; True if it was written."""
        with self._lock:
            self._pending, self._has_pending = value, True
            if self._clock() - self._last_write < self._interval:
                return False
            return self._write_pending()

    def flush(self) -> bool:
        """Write what is pending now, whatever the interval."""
        with self._lock:
            return self._write_pending() if self._has_pending else False

    def _write_pending(self) -> bool:
        try:
            self._write(self._pending)
        except DependencyUnavailable as err:
            log.warning("progress write failed; the next one carries it: %s", err)
            return False
        self._has_pending = False
        self._last_write = self._clock()
        self.writes += 1
        return True
