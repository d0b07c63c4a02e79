"""The Firestore adapter's listeners (for cancellations, for one job's changes), against the emulator."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs.adapters.firestore_store import FirestoreJobStore
from jobs.models import JobRecord
from jobs.state import JobStatus


def test_cancel_listener_sees_only_this_instances_cancelled_jobs(db: Any) -> None:
    collection = f"jobs_watch_{uuid.uuid4().hex[:8]}"  # a collection of its own: no other test's jobs
    jobs = db.collection(collection)
    docs = {
        "done": {"runner_instance": "me", "status": "succeeded", "lease_owner": "o-done"},
        "mine": {"runner_instance": "me", "status": "running", "lease_owner": "o-mine"},
        "theirs": {"runner_instance": "other", "status": "running", "lease_owner": "o-theirs"},
        "old": {"runner_instance": "me", "status": "cancelled", "lease_owner": "o-old"},
    }
    for job_id, doc in docs.items():
        jobs.document(job_id).set(doc)

    calls: list[tuple[str, str]] = []
    seen_mine = threading.Event()

    def on_cancelled(job_id: str, owner: str) -> None:
        calls.append((job_id, owner))
        if job_id == "mine":
            seen_mine.set()

    stop = FirestoreJobStore(db, collection=collection).watch_cancelled("me", on_cancelled)
    try:
        jobs.document("theirs").update({"status": "cancelled"})  # another instance's job
        jobs.document("done").update({"output": "changed"})  # a finished job of ours changing
        jobs.document("mine").update({"status": "cancelled"})
        assert seen_mine.wait(30), calls
    finally:
        stop()
    # The listener's set holds cancelled jobs only: finished and running ones never reach the callback,
    # and nothing of another instance does. ("old" may come once, from the first snapshot: harmless,
    # as the runner holds no such job.)
    assert ("mine", "o-mine") in calls
    assert {job_id for job_id, _ in calls} <= {"mine", "old"}
    assert calls.count(("mine", "o-mine")) == 1


def _record(job_id: str) -> dict[str, Any]:
    """A running job's document, as the adapter writes it."""
    now = datetime.now(UTC)
    record = JobRecord(id=job_id, tenant="t", status=JobStatus.RUNNING, model="m", kind="chat",
                       priority="interactive", stream=True, created_at=now, expire_at=now + timedelta(days=1),
                       request_hash="h")
    return record.model_dump(mode="python") | {"status": record.status.value}


def test_watch_yields_each_change_then_stops_at_the_final_one(db: Any) -> None:
    collection = f"jobs_stream_{uuid.uuid4().hex[:8]}"
    jobs = db.collection(collection)
    jobs.document("j").set(_record("j"))
    store = FirestoreJobStore(db, collection=collection)
    outputs: list[str | None] = []
    statuses: list[str] = []
    changes = store.watch("j", timeout=60, idle=0.5)
    try:
        first = next(changes)
        assert first is not None and first.output is None
        jobs.document("j").update({"output": "Hel"})
        jobs.document("j").update({"output": "Hello", "status": "succeeded"})
        for record in changes:
            if record is not None:
                outputs.append(record.output)
                statuses.append(record.status.value)
    finally:
        changes.close()
    assert outputs[-1] == "Hello" and statuses[-1] == "succeeded"  # intermediate states may be coalesced
    assert statuses.count("succeeded") == 1  # it stopped at the final state


def test_watch_heartbeats_while_nothing_changes_and_ends_at_its_timeout(db: Any) -> None:
    collection = f"jobs_stream_{uuid.uuid4().hex[:8]}"
    db.collection(collection).document("j").set(_record("j"))
    seen = list(FirestoreJobStore(db, collection=collection).watch("j", timeout=1.6, idle=0.5))
    assert seen[0] is not None and seen[1:] and all(s is None for s in seen[1:])
