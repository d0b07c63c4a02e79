"""Firestore's error classes, injected at the gRPC layer (tests/grpc_faults.py) under the real client and
our adapters, against the emulator: a transient one is retried and the job is stored once; one that
lasts becomes DependencyUnavailable (503 with Retry-After), never a 500, and nothing is left written."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from jobs.adapters.firestore_store import FirestoreJobStore
from jobs.catalog import ModelCatalog, ModelSpec
from jobs.errors import DependencyUnavailable
from jobs.models import JobMessage, JobRequest
from jobs.service import JobService
from scripts.stack_client import Stack
from tests.grpc_faults import FaultInjector, faulty_firestore

TRANSIENT = [grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED]


class RecordingPublisher:
    """In-memory publisher (a port implementation): these tests are about the store."""

    def __init__(self) -> None:
        self.published: list[JobMessage] = []

    def publish(self, message: JobMessage) -> str:
        self.published.append(message)
        return str(len(self.published))


@pytest.fixture()
def faulty(stack: Stack) -> Any:
    injector = FaultInjector()
    with stack.emulator_env():
        client = faulty_firestore(stack.project, injector)
        collection = f"jobs_faults_{uuid.uuid4().hex[:8]}"
        publisher = RecordingPublisher()
        service = JobService(store=FirestoreJobStore(client, collection=collection), publisher=publisher,
                             catalog=ModelCatalog([ModelSpec(id="tiny-llama")]))
        yield injector, service, client.collection(collection), publisher


@pytest.mark.parametrize("code", TRANSIENT, ids=lambda c: c.name)
def test_a_transient_error_on_the_create_is_retried_and_the_job_stored_once(faulty: Any, code: grpc.StatusCode) -> None:
    injector, service, jobs, publisher = faulty
    injector.fail("Commit", code)
    view, created = service.submit(JobRequest(prompt="hi", max_tokens=4), tenant="t", idempotency_key=None)
    assert created and injector.injected == [("Commit", code)]
    assert [doc.id for doc in jobs.list_documents()] == [view.id]
    assert [m.job_id for m in publisher.published] == [view.id]


@pytest.mark.parametrize("code", TRANSIENT, ids=lambda c: c.name)
def test_a_transient_error_on_a_read_is_retried(faulty: Any, code: grpc.StatusCode) -> None:
    injector, service, _jobs, _publisher = faulty
    view, _ = service.submit(JobRequest(prompt="hi", max_tokens=4), tenant="t", idempotency_key=None)
    injector.fail("BatchGetDocuments", code)
    assert service.get(view.id, tenant="t").id == view.id
    assert injector.injected == [("BatchGetDocuments", code)]


@pytest.mark.parametrize("code", [grpc.StatusCode.CANCELLED, grpc.StatusCode.PERMISSION_DENIED], ids=lambda c: c.name)
def test_an_error_that_lasts_is_dependency_unavailable_and_nothing_is_written(faulty: Any,
                                                                              code: grpc.StatusCode) -> None:
    injector, service, jobs, publisher = faulty
    injector.fail("Commit", code, times=1000)  # every attempt within the store's time bound
    with pytest.raises(DependencyUnavailable) as raised:
        service.submit(JobRequest(prompt="hi", max_tokens=4), tenant="t", idempotency_key=None)
    assert raised.value.status == 503
    assert list(jobs.list_documents()) == [] and publisher.published == []


def test_a_change_after_this_stores_own_write_skips_the_read_and_one_under_it_is_decided_again(faulty: Any) -> None:
    injector, service, jobs, _publisher = faulty
    view, _ = service.submit(JobRequest(prompt="hi", max_tokens=4), tenant="t", idempotency_key=None)
    store = service._store
    store.update(view.id, lambda r: r.model_copy(update={"attempts": 1}))
    injector.calls.clear()
    after, changed = store.update(view.id, lambda r: r.model_copy(update={"attempts": r.attempts + 1}))
    assert changed and after is not None and after.attempts == 2
    assert "BatchGetDocuments" not in injector.calls  # written on the version it wrote itself

    jobs.document(view.id).update({"attempts": 10})  # another writer
    injector.calls.clear()
    after, changed = store.update(view.id, lambda r: r.model_copy(update={"attempts": r.attempts + 1}))
    assert changed and after is not None and after.attempts == 11  # the guess failed; decided on the document
    assert injector.calls.count("Commit") == 2 and "BatchGetDocuments" in injector.calls
    assert jobs.document(view.id).get().get("attempts") == 11
