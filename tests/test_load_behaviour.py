"""Behaviour under load, over real HTTP against the local stack (never timing): a saturated instance
answers 503 with Retry-After and writes nothing; a hundred concurrent `?wait` requests all get the final
state; an interactive job starts before batch jobs that were waiting."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from google.cloud.firestore_v1.base_query import FieldFilter

from jobs.adapters.api_key_store import FirestoreApiKeyStore
from scripts.api_keys import create_key
from scripts.stack_client import FINAL, JobWatcher, Stack
from tests.faults import extra_function

BODY = {"prompt": "hello", "max_tokens": 4}


def _jobs_of(db: Any, tenant: str) -> int:
    return int(db.collection("jobs").where(filter=FieldFilter("tenant", "==", tenant)).count().get()[0][0].value)


def test_a_saturated_instance_answers_503_with_retry_after_and_writes_nothing(stack: Stack, db: Any,
                                                                             tmp_path: Path) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    key = create_key(FirestoreApiKeyStore(db), tenant=tenant, name="test")
    headers = {"Authorization": f"Bearer {key}"}
    # One slot and no queue: of 40 submissions at once, those that find the slot taken are refused.
    with extra_function(stack, "submit", tmp_path, admission_slots="1", admission_max_wait_seconds="0") as url, \
            httpx.Client(timeout=60, headers=headers, limits=httpx.Limits(max_connections=40)) as client, \
            ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _: client.post(f"{url}/v1/jobs", json=BODY), range(40)))
    refused = [r for r in answers if r.status_code == 503]
    accepted = [r for r in answers if r.status_code == 202]
    assert refused and len(refused) + len(accepted) == 40, [r.status_code for r in answers]
    for answer in refused:
        assert answer.json()["error"]["code"] == "overloaded"
        assert int(answer.headers["Retry-After"]) >= 1
    assert _jobs_of(db, tenant) == len(accepted)  # the refused requests wrote nothing


def test_a_hundred_concurrent_waits_all_return_the_final_state(stack: Stack, http: httpx.Client, db: Any) -> None:
    job_ids = [stack.submit(http, BODY).json()["id"] for _ in range(20)]
    with httpx.Client(timeout=120, headers=http.headers, limits=httpx.Limits(max_connections=100)) as client, \
            ThreadPoolExecutor(100) as pool:
        views = list(pool.map(lambda i: stack.job(client, job_ids[i % 20], wait=60), range(100)))
    assert all(v.status_code == 200 for v in views)
    for view in (v.json() for v in views):
        assert view["status"] in FINAL
        assert view["status"] == db.collection("jobs").document(view["id"]).get().get("status")


def test_an_interactive_job_starts_before_batch_jobs_waiting_ahead_of_it(stack: Stack, http: httpx.Client,
                                                                        db: Any) -> None:
    waiting = 120
    with ThreadPoolExecutor(8) as pool:  # a backlog of batch jobs: far more than the runner takes at once
        batch = list(pool.map(lambda _: stack.submit(http, {**BODY, "max_tokens": 32, "priority": "batch"}).json()["id"],
                              range(waiting)))
    interactive = stack.submit(http, {**BODY, "priority": "interactive"}).json()["id"]
    with JobWatcher(db, [*batch, interactive]) as watcher:
        assert watcher.wait(300), "not every job ended"
    started = {job_id: db.collection("jobs").document(job_id).get().get("started_at")
               for job_id in [*batch, interactive]}
    later = [job_id for job_id in batch if started[job_id] > started[interactive]]
    # Behind one backlog with the batch jobs, the interactive job would start after nearly all of them;
    # with a subscription of its own and a reserved runner slot it starts before most of those still waiting.
    assert len(later) >= waiting // 3, (len(later), waiting)
