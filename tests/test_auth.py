"""Authentication, tenant isolation and quotas over real HTTP against the local stack."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.adapters.api_key_store import FirestoreApiKeyStore
from jobs.auth import hash_key
from scripts.api_keys import create_key
from scripts.stack_client import Stack
from tests.faults import extra_function

BODY = {"prompt": "who am I", "max_tokens": 4}


@pytest.fixture(scope="module")
def keys(db: Any) -> FirestoreApiKeyStore:
    return FirestoreApiKeyStore(db)


def _tenant_key(keys: FirestoreApiKeyStore) -> tuple[str, str]:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    return tenant, create_key(keys, tenant=tenant, name="test")


def _jobs_of(db: Any, tenant: str) -> int:
    return sum(1 for s in db.collection("jobs").stream() if s.to_dict().get("tenant") == tenant)


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer llmq_nope", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 500, "llmq_nokeyword",
], ids=["none", "empty", "no-token", "unknown", "basic", "huge", "no-scheme"])
def test_missing_or_bad_key_is_401_and_writes_nothing(stack: Stack, db: Any, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    before = sum(1 for _ in db.collection("jobs").list_documents())
    with httpx.Client(timeout=30, headers=headers) as anonymous:
        for response in (
            anonymous.post(f"{stack.info['submit_url']}/v1/jobs", json=BODY),
            anonymous.post(f"{stack.info['submit_url']}/v1/jobs/job_{'0' * 32}/cancel"),
            anonymous.get(f"{stack.info['status_url']}/v1/jobs/job_{'0' * 32}"),
            anonymous.get(f"{stack.info['status_url']}/v1/models"),
            anonymous.post(f"{stack.info['submit_url']}/v1/jobs", content=b"{bad", headers={"Content-Type": "text/plain"}),
        ):
            _error(response, 401, "unauthenticated")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "llmq_" not in response.text  # the key is never echoed
        assert anonymous.get(f"{stack.info['submit_url']}/openapi.json").status_code == 200  # open
    assert sum(1 for _ in db.collection("jobs").list_documents()) == before


def test_revoked_key_is_401(stack: Stack, keys: FirestoreApiKeyStore, tmp_path: Path) -> None:
    _, key = _tenant_key(keys)
    with stack.http(api_key=key) as client:
        assert stack.submit(client, BODY).status_code == 202
    keys.revoke(hash_key(key), at=datetime.now(UTC))
    # An instance that has not seen the key refuses it at once; one that has, within its cache
    # period (30 s, documented).
    with extra_function(stack, "submit", tmp_path) as submit_url, \
            httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        _error(client.post(f"{submit_url}/v1/jobs", json=BODY), 401, "unauthenticated")


def test_tenants_cannot_see_or_cancel_each_others_jobs(stack: Stack, keys: FirestoreApiKeyStore) -> None:
    _, key_a = _tenant_key(keys)
    _, key_b = _tenant_key(keys)
    with stack.http(api_key=key_a) as a, stack.http(api_key=key_b) as b:
        job = stack.submit(a, {**BODY, "idempotency_key": "shared-key"}).json()
        # B sees a missing job, exactly as for an id that never existed: no existence leak.
        missing = stack.job(b, f"job_{'0' * 32}")
        foreign = stack.job(b, job["id"])
        _error(foreign, 404, "not_found")
        assert foreign.json()["error"]["code"] == missing.json()["error"]["code"]
        _error(b.post(f"{stack.info['submit_url']}/v1/jobs/{job['id']}/cancel"), 404, "not_found")
        # Idempotency keys are per tenant: B's same key is B's own new job.
        mine = stack.submit(b, {**BODY, "idempotency_key": "shared-key"})
        assert mine.status_code == 202 and mine.json()["id"] != job["id"]
        assert stack.job(a, job["id"], wait=60).json()["status"] in ("succeeded", "running", "queued")


def test_valid_key_works_end_to_end(stack: Stack, keys: FirestoreApiKeyStore, db: Any) -> None:
    tenant, key = _tenant_key(keys)
    with stack.http(api_key=key) as client:
        job = stack.submit(client, BODY)
        assert job.status_code == 202
        assert stack.job(client, job.json()["id"], wait=60).json()["status"] == "succeeded"
    assert db.collection("jobs").document(job.json()["id"]).get().to_dict()["tenant"] == tenant


def test_submission_rate_quota_answers_429_with_retry_after(stack: Stack, keys: FirestoreApiKeyStore,
                                                             tmp_path: Path) -> None:
    _, key = _tenant_key(keys)
    with extra_function(stack, "submit", tmp_path, quota_submissions_per_minute="3") as submit_url, \
            httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        accepted = [client.post(f"{submit_url}/v1/jobs", json=BODY).status_code for _ in range(3)]
        assert accepted == [202, 202, 202]
        over = client.post(f"{submit_url}/v1/jobs", json=BODY)
        _error(over, 429, "rate_limit_exceeded")
        assert int(over.headers["Retry-After"]) > 0


def test_queued_jobs_quota_answers_429(stack: Stack, keys: FirestoreApiKeyStore, tmp_path: Path) -> None:
    from tests.faults import paused

    _, key = _tenant_key(keys)
    with extra_function(stack, "submit", tmp_path, quota_queued_jobs="2") as submit_url, \
            httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client, \
            paused(stack.pid("runner")):  # nothing runs: the jobs stay queued
        assert [client.post(f"{submit_url}/v1/jobs", json=BODY).status_code for _ in range(2)] == [202, 202]
        over = client.post(f"{submit_url}/v1/jobs", json=BODY)
        _error(over, 429, "queue_quota_exceeded")
        assert int(over.headers["Retry-After"]) > 0
