"""End to end through the real local stack: HTTP submit → Firestore + Pub/Sub push → runner with
the tiny model → GCS result and final document, observed through Firestore listeners."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx

from scripts.stack_client import JobWatcher, Stack


def _body(i: int) -> dict[str, Any]:
    if i % 2:
        return {"messages": [{"role": "user", "content": f"Tell me about river {i}."}], "max_tokens": 12 + i,
                "metadata": {"n": str(i)}}
    return {"prompt": f"Story number {i}:", "max_tokens": 12 + i, "temperature": 0, "metadata": {"n": str(i)}}


def _result_text(result: dict[str, Any]) -> str:
    choice = result["choices"][0]
    return choice["message"]["content"] if result["object"] == "chat.completion" else choice["text"]


def test_twenty_concurrent_jobs_succeed_and_results_match(stack: Stack, db: Any) -> None:
    bodies = [_body(i) for i in range(20)]
    with JobWatcher(db) as watcher, ThreadPoolExecutor(20) as pool, stack.http() as client:
        before = client.get(f"{stack.info['runner_url']}/readyz").json()["engine"]
        def submit(body: dict[str, Any]) -> dict[str, Any]:
            response = stack.submit(client, body)
            assert response.status_code == 202, response.text
            job = response.json()
            watcher.add(job["id"])
            return job

        jobs = list(pool.map(submit, bodies))
        assert all(j["status"] == "queued" for j in jobs)
        assert len({j["id"] for j in jobs}) == 20
        assert watcher.wait(240), {j["id"]: watcher.statuses(j["id"]) for j in jobs}
        after = client.get(f"{stack.info['runner_url']}/readyz").json()["engine"]

        bucket = stack.storage().bucket(stack.info["results_bucket"])
        for job, body in zip(jobs, bodies):
            doc = watcher.latest(job["id"])
            assert doc is not None
            assert doc["status"] == "succeeded", doc
            # Listeners may coalesce changes that follow each other closely; what they see is in order.
            seen = watcher.statuses(job["id"])
            assert seen[-1] == "succeeded" and seen == [s for s in ("queued", "running", "succeeded") if s in seen]
            assert doc["attempts"] == 1
            assert doc["finish_reason"] in ("stop", "length")
            assert doc["metadata"] == body["metadata"]
            assert doc["expire_at"] - doc["created_at"] == timedelta(seconds=86400)
            assert doc["started_at"] >= doc["created_at"] and doc["finished_at"] >= doc["started_at"]
            assert "prompt" not in doc and "messages" not in doc  # listeners never download prompts
            usage = doc["usage"]
            assert 1 <= usage["completion_tokens"] <= body["max_tokens"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

            assert doc["result_uri"] == f"gs://{stack.info['results_bucket']}/results/{job['id']}.json"
            result = json.loads(bucket.blob(f"results/{job['id']}.json").download_as_text())
            assert result["id"] == job["id"]
            assert result["object"] == ("chat.completion" if "messages" in body else "text_completion")
            assert result["model"] == stack.info["model"] == doc["model"]
            assert result["usage"] == usage
            assert _result_text(result) == doc["output"]
            assert result["choices"][0]["finish_reason"] == doc["finish_reason"]
            assert result["timings"]["generation_seconds"] > 0

    # The jobs were batched in the runner's engine: fewer forward passes than tokens generated.
    generated = sum((watcher.latest(j["id"]) or {})["usage"]["completion_tokens"] for j in jobs)
    assert after["tokens_generated"] - before["tokens_generated"] == generated
    assert after["forward_passes"] - before["forward_passes"] < generated
    assert after["running"] == 0


def test_wait_holds_until_the_job_is_final(stack: Stack, http: httpx.Client) -> None:
    job = stack.submit(http, {"prompt": "wait for me", "max_tokens": 16}).json()
    view = stack.job(http, job["id"], wait=60).json()
    assert view["status"] == "succeeded"
    assert view["usage"]["completion_tokens"] >= 1
    assert view["result_uri"].endswith(f"/results/{job['id']}.json")


def test_idempotent_resubmission_returns_the_same_job(stack: Stack, http: httpx.Client, db: Any) -> None:
    key = f"demo-{uuid.uuid4()}"
    body = {"prompt": "only once", "max_tokens": 8, "metadata": {"k": "v"}}
    first = stack.submit(http, body, headers={"Idempotency-Key": key})
    assert first.status_code == 202
    # Same key and body, with the defaults spelled out and the key in the body: the same job.
    again = stack.submit(http, {**body, "temperature": 1.0, "idempotency_key": key},
                         headers={"Idempotency-Key": key})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    conflict = stack.submit(http, {**body, "max_tokens": 9}, headers={"Idempotency-Key": key})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_reused"
    # Keys are scoped: another key is another job.
    other = stack.submit(http, body, headers={"Idempotency-Key": key + "-2"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    final = stack.job(http, first.json()["id"], wait=60).json()
    assert final["status"] == "succeeded" and final["attempts"] == 1


def test_cancel_of_a_finished_job_returns_it_unchanged(stack: Stack, http: httpx.Client) -> None:
    job = stack.submit(http, {"prompt": "finish first", "max_tokens": 4}).json()
    done = stack.job(http, job["id"], wait=60).json()
    assert done["status"] == "succeeded"
    response = http.post(f"{stack.info['submit_url']}/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json() == done


def test_models_and_openapi_are_served(stack: Stack, http: httpx.Client) -> None:
    models = http.get(f"{stack.info['status_url']}/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == stack.info["model"] and models["data"][0]["object"] == "model"
    for url in (stack.info["submit_url"], stack.info["status_url"]):
        spec = http.get(f"{url}/openapi.json").json()
        assert spec["openapi"].startswith("3.")
        assert {"/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/cancel", "/v1/models"} <= set(spec["paths"])
