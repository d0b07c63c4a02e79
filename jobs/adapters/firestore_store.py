"""JobStore over Firestore. State changes are optimistic writes preconditioned on the document's
update time (lock-free: the emulator's transaction locks time out under concurrency)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from jobs.adapters.firestore_writes import RETRY, TIMEOUT, OwnWrites, conditional_update
from jobs.adapters.google_errors import CLIENT_ERRORS
from jobs.constants import JOBS_COLLECTION, REQUEST_SUBCOLLECTION
from jobs.errors import DependencyUnavailable, PayloadTooLarge
from jobs.models import JobMessage, JobRecord
from jobs.ports import Mutation, watch_states
from jobs.webhooks import JOB_EVENTS

log = logging.getLogger(__name__)

_UPDATE_ATTEMPTS = 8
_MAX_STORED_MESSAGE_BYTES = 1_048_487  # Firestore's longest string value (measured on the emulator)


def _document(record: JobRecord) -> dict[str, Any]:
    doc = record.model_dump(mode="python")
    doc["status"] = record.status.value
    return doc


_WAIT_RECHECK_SECONDS = 5.0  # a waiting request re-reads the document this often


class FirestoreJobStore:
    def __init__(self, client: firestore.Client, *, collection: str = JOBS_COLLECTION) -> None:
        self._client = client
        self._jobs = client.collection(collection)
        self._own_writes: OwnWrites[JobRecord] = OwnWrites()

    def create(self, record: JobRecord, message: JobMessage) -> bool:
        """Raises PayloadTooLarge for a request Firestore cannot hold (a body within the API's limit may
        still be: Firestore takes strings of at most 1,048,487 bytes)."""
        body = message.model_dump_json()
        if len(body.encode()) > _MAX_STORED_MESSAGE_BYTES:
            raise PayloadTooLarge(f"the request takes more than {_MAX_STORED_MESSAGE_BYTES} bytes once stored")
        ref = self._jobs.document(record.id)
        batch = self._client.batch()
        batch.create(ref, _document(record))
        batch.create(
            ref.collection(REQUEST_SUBCOLLECTION).document("body"),
            {"message": body, "expire_at": record.expire_at},
        )
        try:
            batch.commit(timeout=TIMEOUT, retry=RETRY)
        except gexc.Conflict:  # AlreadyExists: the idempotency key was used before
            return False
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the job store is unavailable") from err
        return True

    def get(self, job_id: str) -> JobRecord | None:
        try:
            snapshot = self._jobs.document(job_id).get(timeout=TIMEOUT, retry=RETRY)
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the job store is unavailable") from err
        return JobRecord.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def get_message(self, job_id: str) -> JobMessage | None:
        try:
            snapshot = self._jobs.document(job_id).collection(REQUEST_SUBCOLLECTION).document("body").get(timeout=TIMEOUT, retry=RETRY)
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the job store is unavailable") from err
        return JobMessage.model_validate_json(snapshot.get("message")) if snapshot.exists else None

    def delete(self, job_id: str) -> None:
        ref = self._jobs.document(job_id)
        batch = self._client.batch()
        batch.delete(ref.collection(REQUEST_SUBCOLLECTION).document("body"))
        batch.delete(ref)
        try:
            batch.commit(timeout=TIMEOUT, retry=RETRY)
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the job store is unavailable") from err

    def update(self, job_id: str, mutate: Mutation) -> tuple[JobRecord | None, bool]:
        return conditional_update(
            self._client, self._jobs.document(job_id), mutate,
            parse=lambda snapshot: JobRecord.model_validate(snapshot.to_dict()), dump=_document,
            attempts=_UPDATE_ATTEMPTS, what="job", own_writes=self._own_writes,
        )

    def wait_until_final(self, job_id: str, timeout: float) -> JobRecord | None:
        finished = threading.Event()
        latest: list[JobRecord] = []

        def on_snapshot(snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
            for snapshot in snapshots:
                if snapshot.exists:
                    record = JobRecord.model_validate(snapshot.to_dict())
                    latest.append(record)
                    if record.status.is_final:
                        finished.set()

        watch = self._jobs.document(job_id).on_snapshot(on_snapshot)
        deadline = time.monotonic() + timeout
        try:
            while not finished.wait(max(0.0, min(_WAIT_RECHECK_SECONDS, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    break
                # A listener can miss a change (seen once in a full test run: the job ended, the listener
                # never said so), so read the document now and then as well.
                try:
                    record = self.get(job_id)
                except DependencyUnavailable:
                    continue
                if record is not None and record.status.is_final:
                    latest.append(record)
                    break
        finally:
            watch.unsubscribe()
        return latest[-1] if latest else None

    def watch(self, job_id: str, *, timeout: float, idle: float) -> Generator[JobRecord | None, None, None]:
        changes: queue.Queue[JobRecord] = queue.Queue()

        def on_snapshot(snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
            for snapshot in snapshots:
                if snapshot.exists:
                    changes.put(JobRecord.model_validate(snapshot.to_dict()))

        def next_state(_last: JobRecord | None, wait: float) -> JobRecord | None:
            try:
                return changes.get(timeout=wait)
            except queue.Empty:
                # A listener can miss a change (see wait_until_final): an idle interval re-reads as well.
                try:
                    return self.get(job_id)
                except DependencyUnavailable:
                    return None

        watch = self._jobs.document(job_id).on_snapshot(on_snapshot)
        try:
            yield from watch_states(next_state, timeout=timeout, idle=idle)
        finally:
            watch.unsubscribe()

    def watch_cancelled(self, instance: str, on_cancelled: Callable[[str, str], None]) -> Callable[[], None]:
        """One listener for all the jobs a runner instance holds: calls on_cancelled(job_id, lease_owner)
        when one of them is cancelled. Returns the function that stops listening."""

        def on_snapshot(_snapshots: Any, changes: list[Any], _read_time: Any) -> None:
            for change in changes:  # what changed only (the first snapshot's old cancellations are harmless)
                doc = change.document.to_dict() or {}
                if change.type.name != "REMOVED" and doc.get("lease_owner"):
                    on_cancelled(change.document.id, doc["lease_owner"])

        # Only the cancelled ones: a query on runner_instance alone holds every job the instance ever ran,
        # and the client library re-sorts that whole set on each change (quadratic over the instance's life,
        # measured holding the runner's GIL more than its generation thread did; each document is also a
        # billed read). Two equalities need no composite index: Firestore merges the single-field ones.
        query = (self._jobs.where(filter=FieldFilter("runner_instance", "==", instance))
                 .where(filter=FieldFilter("status", "==", "cancelled")))
        watch = query.on_snapshot(on_snapshot)
        return watch.unsubscribe

    def find_stale(self, *, queued_before: datetime, lease_expired_before: datetime, limit: int) -> list[JobRecord]:
        """Jobs a reconciler should look at: queued since before `queued_before`, or running under a
        lease that lapsed before `lease_expired_before`."""
        queued = (self._jobs.where(filter=FieldFilter("status", "==", "queued"))
                  .where(filter=FieldFilter("created_at", "<", queued_before)).limit(limit))
        running = (self._jobs.where(filter=FieldFilter("status", "==", "running"))
                   .where(filter=FieldFilter("lease_expires_at", "<", lease_expired_before)).limit(limit))
        try:
            return [JobRecord.model_validate(s.to_dict()) for q in (queued, running) for s in q.stream(timeout=TIMEOUT, retry=RETRY)]
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the job store is unavailable") from err

    def find_unannounced(self, *, ended_before: datetime, limit: int) -> list[JobRecord]:
        # pending_event IN [...] AND finished_at < T: a composite index of pulumi/llmq_infra/store.py.
        query = (self._jobs.where(filter=FieldFilter("pending_event", "in", list(JOB_EVENTS)))
                 .where(filter=FieldFilter("finished_at", "<", ended_before)).limit(limit))
        try:
            return [JobRecord.model_validate(s.to_dict()) for s in query.stream(timeout=TIMEOUT, retry=RETRY)]
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the job store is unavailable") from err

    def count(self, tenant: str, *, status: str | None = None, created_since: datetime | None = None) -> int:
        """An aggregation count (billed per 1000 index entries, no document reads, no counter document)."""
        query = self._jobs.where(filter=FieldFilter("tenant", "==", tenant))
        if status is not None:
            query = query.where(filter=FieldFilter("status", "==", status))
        if created_since is not None:
            query = query.where(filter=FieldFilter("created_at", ">=", created_since))
        counting: Any = query.count()  # the client types where() as returning a class, not an instance
        try:
            result = counting.get(timeout=TIMEOUT, retry=RETRY)
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the job store is unavailable") from err
        return int(result[0][0].value)
