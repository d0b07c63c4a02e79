"""The Firestore adapter's listener for cancellations, against the emulator."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from jobs.adapters.firestore_store import FirestoreJobStore


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
