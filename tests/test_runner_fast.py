"""Fast tier: the runner's push endpoint through Starlette's TestClient, over in-memory ports
(tests/memory.py): each domain outcome, and the one HTTP answer the app gives it."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from jobs.catalog import ModelCatalog, ModelSpec
from jobs.engine import EngineError, RequestRejected
from jobs.models import JobErrorCode, JobMessage, JobRequest
from jobs.quotas import Quota
from jobs.service import JobService
from jobs.state import JobStatus
from runner.app import RunnerPorts, create_app
from runner.settings import RunnerSettings
from tests.memory import InMemoryEngine, InMemoryJobStore, InMemoryPublisher, InMemoryResultStore

READY_TIMEOUT = 30


class Runner:
    def __init__(self, client: TestClient, store: InMemoryJobStore, results: InMemoryResultStore,
                 engine: InMemoryEngine) -> None:
        self.client, self.store, self.results, self.engine = client, store, results, engine
        self.publisher = InMemoryPublisher()
        self.service = JobService(store=store, publisher=self.publisher, catalog=ModelCatalog([ModelSpec(id="tiny-llama")]),
                                  quota=Quota(submissions_per_minute=0, queued_jobs=0), max_prompt_chars_per_token=16)

    def submit(self, **body: Any) -> JobMessage:
        request = JobRequest.model_validate({"prompt": "one two three", "max_tokens": 4, **body})
        self.service.submit(request, tenant="t", idempotency_key=None)
        return self.publisher.published[-1]

    def push(self, message: JobMessage | None = None, *, raw: bytes | None = None) -> Any:
        if raw is None:
            assert message is not None
            data = base64.b64encode(message.model_dump_json().encode()).decode()
            raw = (f'{{"message": {{"data": "{data}", "attributes": {{"job_id": "{message.job_id}"}}}},'
                   f' "subscription": "s"}}').encode()
        return self.client.post("/push", content=raw)


@pytest.fixture()
def runner() -> Iterator[Runner]:
    store, results, engine = InMemoryJobStore(), InMemoryResultStore(), InMemoryEngine()

    async def connect(_settings: RunnerSettings) -> RunnerPorts:
        return RunnerPorts(engine=engine, store=store, results=results)

    settings = RunnerSettings(max_inflight=2, interactive_reserved_slots=1, max_waiting_batch_pushes=0,
                              lease_seconds=30, health_check_interval_seconds=60)
    with TestClient(create_app(settings, connect)) as client:
        deadline = time.monotonic() + READY_TIMEOUT  # the engine loads in the background, as in production
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the runner never became ready"
        yield Runner(client, store, results, engine)


def test_a_push_generates_writes_the_result_and_acknowledges(runner: Runner) -> None:
    message = runner.submit()
    answer = runner.push(message)
    assert (answer.status_code, answer.json()) == (200, {"outcome": "succeeded"})
    record = runner.store.get(message.job_id)
    assert record is not None and record.status is JobStatus.SUCCEEDED and record.output == "w0 w1 w2 w3"
    assert record.lease_owner is None and record.result_uri == f"gs://memory/results/{message.job_id}.json"
    assert runner.results.objects[message.job_id]["choices"][0]["text"] == "w0 w1 w2 w3"
    # A redelivery of the same message finds the job finished: acknowledged, nothing generated twice.
    again = runner.push(message)
    assert (again.status_code, again.json()) == (200, {"outcome": "already finished"})
    assert len(runner.engine.started) == 1


def test_a_request_the_engine_rejects_fails_the_job_and_is_acknowledged(runner: Runner) -> None:
    runner.engine.fail_with = RequestRejected("temperature out of the engine's range")
    message = runner.submit()
    answer = runner.push(message)
    assert answer.status_code == 200
    record = runner.store.get(message.job_id)
    assert record is not None and record.status is JobStatus.FAILED and record.error is not None
    assert record.error.code is JobErrorCode.REJECTED_BY_ENGINE and "temperature" in record.error.message


def test_a_prompt_too_long_fails_the_job(runner: Runner) -> None:
    message = runner.submit(max_tokens=64)
    assert runner.push(message).status_code == 200
    record = runner.store.get(message.job_id)
    assert record is not None and record.error is not None
    assert record.error.code is JobErrorCode.CONTEXT_LENGTH_EXCEEDED


@pytest.mark.parametrize("error", [EngineError("a transient engine failure"), KeyError("a defect")])
def test_a_transient_or_unexpected_error_asks_for_redelivery_and_hands_the_job_back(
        runner: Runner, error: Exception) -> None:
    runner.engine.fail_with = error
    message = runner.submit()
    answer = runner.push(message)
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1
    record = runner.store.get(message.job_id)
    assert record is not None and record.status is JobStatus.RUNNING and record.attempts == 1
    # Handed back: the redelivery takes the job over at once instead of waiting for the lease to lapse.
    runner.engine.fail_with = None
    assert runner.push(message).json() == {"outcome": "succeeded"}


def test_a_job_held_by_a_live_delivery_is_refused_with_its_lease_time(runner: Runner) -> None:
    runner.engine.hold = asyncio.Event()  # the first delivery waits inside the engine
    message = runner.submit()
    answers: list[int] = []
    first = threading.Thread(target=lambda: answers.append(runner.push(message).status_code))
    first.start()
    deadline = time.monotonic() + READY_TIMEOUT
    while not runner.engine.started:
        assert time.monotonic() < deadline, "the first delivery never reached the engine"
        time.sleep(0.01)
    second = runner.push(message)
    assert second.status_code == 429 and 1 <= int(second.headers["Retry-After"]) <= 30
    runner.client.portal.call(runner.engine.hold.set)  # type: ignore[union-attr]
    first.join(READY_TIMEOUT)
    assert answers == [200]


@pytest.mark.parametrize("raw", [b"not json", b'{"no": "message"}'])
def test_a_push_that_is_no_envelope_is_refused_in_the_one_body_shape(runner: Runner, raw: bytes) -> None:
    answer = runner.push(raw=raw)
    assert (answer.status_code, answer.json()) == (400, {"outcome": "not a Pub/Sub push envelope"})


def test_an_unreadable_message_naming_its_job_fails_that_job(runner: Runner) -> None:
    message = runner.submit()
    answer = runner.push(raw=(b'{"message": {"data": "bm90IGEgam9i", "attributes": {"job_id": "'
                              + message.job_id.encode() + b'"}}}'))
    assert answer.status_code == 200
    record = runner.store.get(message.job_id)
    assert record is not None and record.error is not None and record.error.code is JobErrorCode.INVALID_MESSAGE
    nameless = runner.push(raw=b'{"message": {"data": "bm90IGEgam9i"}}')
    assert nameless.status_code == 400 and "undecodable" in nameless.json()["outcome"]


def test_a_job_for_another_model_fails_here(runner: Runner) -> None:
    message = runner.submit()
    other = message.model_copy(update={"model": "other-model"})
    assert runner.push(other).status_code == 200
    record = runner.store.get(message.job_id)
    assert record is not None and record.error is not None and record.error.code is JobErrorCode.MODEL_NOT_SERVED
