"""On-demand batches over real HTTP against the local stack: POST /v1/batches (inline JSONL or an
input_uri) starts the batch runner at once (the local launcher), GET /v1/batches/{id} reads it, a
Firestore listener sees its progress, and POST /v1/batches/{id}/cancel stops it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from scripts.stack_client import Stack
from tests.batch_helpers import DocWatcher, batch_final, chat_line, completion_line, jsonl

STATUS_ORDER = ("validating", "in_progress", "finalizing", "completed")


def _post(stack: Stack, http: httpx.Client, body: Any, **kwargs: Any) -> httpx.Response:
    return http.post(f"{stack.info['submit_url']}/v1/batches", json=body, **kwargs)


def _get(stack: Stack, http: httpx.Client, batch_id: str) -> httpx.Response:
    return http.get(f"{stack.info['status_url']}/v1/batches/{batch_id}")


def _object_lines(stack: Stack, uri: str) -> list[dict[str, Any]]:
    bucket, _, name = uri[len("gs://"):].partition("/")
    text = stack.storage().bucket(bucket).blob(name).download_as_text()
    return [json.loads(line) for line in text.splitlines() if line]


def test_inline_batch_runs_now_and_a_listener_sees_its_progress(stack: Stack, db: Any, http: httpx.Client) -> None:
    lines = [chat_line(f"q{i}", f"Question {i}?") if i % 2 else completion_line(f"q{i}", f"Prompt {i}")
             for i in range(12)]
    response = _post(stack, http, {"input_jsonl": jsonl(lines), "metadata": {"team": "search"}})
    assert response.status_code == 202, response.text
    created = response.json()
    batch_id = created["id"]
    assert response.headers["Location"] == f"/v1/batches/{batch_id}"
    assert created["object"] == "batch" and created["status"] == "validating"
    assert created["input_uri"] == f"gs://{stack.info['batch_bucket']}/inbox-ondemand/{batch_id}.jsonl"
    assert created["output_uri"] == f"gs://{stack.info['batch_bucket']}/outbox/{batch_id}/output.jsonl"
    assert created["metadata"] == {"team": "search"}

    watcher = DocWatcher(db, batch_id)
    try:
        doc = watcher.wait_final(240)
        seen = watcher.statuses()
        history = list(watcher.history)
    finally:
        watcher.close()
    assert doc["status"] == "completed", doc
    # In order; a listener may coalesce changes that follow each other within milliseconds.
    assert seen == [s for s in STATUS_ORDER if s in seen] and len(seen) >= 2
    assert doc["created_at"] <= doc["in_progress_at"] <= doc["completed_at"]
    completed = [h["request_counts"]["completed"] for h in history if "request_counts" in h]
    assert completed == sorted(completed)  # progress only grows
    assert doc["request_counts"] == {"total": 12, "completed": 12, "failed": 0}

    view = _get(stack, http, batch_id).json()
    assert view["status"] == "completed" and view["request_counts"] == doc["request_counts"]
    assert view["completed_at"] is not None and "tenant" not in view and "task_counts" not in view
    output = _object_lines(stack, view["output_uri"])
    assert sorted(o["custom_id"] for o in output) == sorted(f"q{i}" for i in range(12))
    assert _object_lines(stack, view["error_uri"]) == []


def test_batch_from_an_input_uri(stack: Stack, db: Any, http: httpx.Client) -> None:
    name = f"uploads/{uuid.uuid4().hex}.jsonl"
    bucket = stack.storage().bucket(stack.info["batch_bucket"])
    bucket.blob(name).upload_from_string(jsonl([completion_line("a", "x"), "garbage", completion_line("b", "y")]))
    response = _post(stack, http, {"input_uri": f"gs://{stack.info['batch_bucket']}/{name}"})
    assert response.status_code == 202, response.text
    doc = batch_final(db, response.json()["id"], timeout=240)
    assert doc["status"] == "completed" and doc["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    errors = _object_lines(stack, doc["error_uri"])
    assert [(e["custom_id"], e["error"]["code"], e["error"]["line"]) for e in errors] == [(None, "invalid_json", 2)]


def test_cancel_over_http_ends_the_batch_cancelled(stack: Stack, db: Any, http: httpx.Client) -> None:
    lines = [completion_line(f"c{i}", f"Tale {i}", max_tokens=64) for i in range(200)]
    response = _post(stack, http, {"input_jsonl": jsonl(lines)})
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    watcher = DocWatcher(db, batch_id)
    try:
        cancelled = http.post(f"{stack.info['submit_url']}/v1/batches/{batch_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelling"
        doc = watcher.wait_final(240)
    finally:
        watcher.close()
    assert doc["status"] == "cancelled", doc
    counts = doc["request_counts"]
    assert counts["total"] == 200 and counts["completed"] + counts["failed"] == 200 and counts["failed"] > 0
    errors = _object_lines(stack, doc["error_uri"])
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"} and len(errors) == counts["failed"]
    # Cancelling a finished batch changes nothing.
    again = http.post(f"{stack.info['submit_url']}/v1/batches/{batch_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_invalid_batch_requests_are_rejected(stack: Stack, http: httpx.Client) -> None:
    bucket = stack.info["batch_bucket"]
    cases = [
        ({}, 400, "invalid_request"),
        ({"input_uri": f"gs://{bucket}/x.jsonl", "input_jsonl": "{}"}, 400, "invalid_request"),
        ({"input_uri": "gs://another-bucket/x.jsonl"}, 400, "invalid_request"),
        ({"input_uri": f"gs://{bucket}/inbox/x.jsonl"}, 400, "invalid_request"),
        ({"input_uri": f"gs://{bucket}/{uuid.uuid4().hex}.jsonl"}, 400, "input_not_found"),
        ({"input_jsonl": "{}", "endpoint_override": 1}, 400, "unsupported_parameter"),
        ({"input_jsonl": "{}", "completion_window": "8d"}, 400, "invalid_request"),  # "24h", or llmq's up to 7 days
        ({"input_file_id": "file-" + uuid.uuid4().hex, "endpoint": "/v1/completions"}, 400, "file_not_found"),
    ]
    for body, status, code in cases:
        response = _post(stack, http, body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), (body, response.text)
    not_json = http.post(f"{stack.info['submit_url']}/v1/batches", content=b"x", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 415
    assert http.get(f"{stack.info['submit_url']}/v1/batches").status_code == 405
    for unknown in ("batch_" + uuid.uuid4().hex, "nope", "job_" + uuid.uuid4().hex):
        response = _get(stack, http, unknown)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert http.post(f"{stack.info['submit_url']}/v1/batches/batch_{uuid.uuid4().hex}/cancel").status_code == 404


def test_openapi_describes_the_batch_routes(stack: Stack, http: httpx.Client) -> None:
    for url in (stack.info["submit_url"], stack.info["status_url"]):
        paths = http.get(f"{url}/openapi.json").json()["paths"]
        assert {"/v1/batches", "/v1/batches/{id}", "/v1/batches/{id}/cancel"} <= set(paths)


def test_reconciler_ends_batches_that_no_runner_works_on(stack: Stack, db: Any, http: httpx.Client) -> None:
    # Batch documents as a lost launch or a dead runner leaves them: not final, untouched for two days.
    from datetime import timedelta

    from jobs.adapters.batch_store import FirestoreBatchStore
    from jobs.batch_state import BatchStatus
    from jobs.batches import BatchRecord, new_batch_id
    from jobs.service import utcnow

    store, now = FirestoreBatchStore(db), utcnow()
    long_ago = now - timedelta(days=2)
    ids: dict[str, str] = {}
    # Their completion windows (7 days) still open, but one: a batch nothing works on past its window expires.
    for label, status, when, window in [("validating", BatchStatus.VALIDATING, long_ago, "7d"),
                                        ("in_progress", BatchStatus.IN_PROGRESS, long_ago, "7d"),
                                        ("cancelling", BatchStatus.CANCELLING, long_ago, "7d"),
                                        ("completed", BatchStatus.COMPLETED, long_ago, "7d"),
                                        ("past_window", BatchStatus.IN_PROGRESS, long_ago, "24h"),
                                        ("fresh", BatchStatus.IN_PROGRESS, now, "24h")]:
        ids[label] = new_batch_id()
        record = BatchRecord.new(batch_id=ids[label], input_uri="gs://b/in.jsonl", output_prefix="gs://b/out/",
                                 now=when, tenant=stack.info["tenant"], source="api", completion_window=window)
        assert store.create(record.model_copy(update={"status": status}))

    # Only what was untouched for a day counts (batches other tests run now are not touched).
    report = http.post(f"{stack.info['reconcile_url']}/", json={"batch_stale_for_seconds": 86400}).json()
    assert (report["batches_failed"], report["batches_cancelled"], report["batches_expired"]) == (2, 1, 1), report

    def seen(label: str) -> dict[str, Any]:
        response = http.get(f"{stack.info['status_url']}/v1/batches/{ids[label]}")
        assert response.status_code == 200, response.text
        return response.json()

    for label in ("validating", "in_progress"):
        body = seen(label)
        assert body["status"] == "failed" and body["error"]["code"] == "runner_lost", body
        assert body["failed_at"] is not None
    cancelled = seen("cancelling")
    assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "runner_lost"
    assert seen("completed")["status"] == "completed" and seen("completed")["error"] is None
    assert seen("fresh")["status"] == "in_progress"
    expired = seen("past_window")
    assert expired["status"] == "expired" and expired["expired_at"] is not None and expired["error"]["code"] == "runner_lost"

    # A second run finds nothing more to do.
    again = http.post(f"{stack.info['reconcile_url']}/", json={"batch_stale_for_seconds": 86400}).json()
    assert again["batches_failed"] == again["batches_cancelled"] == again["batches_expired"] == 0, again
