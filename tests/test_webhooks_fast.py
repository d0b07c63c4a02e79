"""Fast tier: webhooks without emulators — where a webhook may go (every refused address class, at registration
and at delivery, through an injected resolver: no packet is sent to any of them), Standard Webhooks signatures
and secret rotation (checked with the `standardwebhooks` package), the outbox (an ended job owes its event until
it is announced), and the endpoints API through the real handlers over in-memory ports."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import functions_framework
import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.testclient import TestClient

from jobs import batches, lifecycle
from jobs.adapters import wiring
from jobs.adapters.webhook_sender import HttpSender
from jobs.announce import announce_job
from jobs.auth import ApiKey, hash_key, new_key
from jobs.batches import BatchRecord
from jobs.catalog import ModelCatalog, ModelSpec
from jobs.delivery import Deliverer, Outcome
from jobs.errors import DependencyUnavailable, InvalidRequest
from jobs.models import JobErrorCode, JobRecord, JobRequest, Usage
from jobs.reconciler import announce_pending
from jobs.service import JobService
from jobs.settings import api_settings
from jobs.state import JobStatus
from jobs.webhooks import (
    Announcer,
    CreateEndpointRequest,
    DeliveryMessage,
    EndpointService,
    Secret,
    WebhookEndpoint,
    check_url,
    event_id,
    rotated,
)
from runner.app import RunnerPorts, create_app
from runner.settings import RunnerSettings
from tests.memory import (
    InMemoryApiKeyStore,
    InMemoryBatchStore,
    InMemoryDeliveryQueue,
    InMemoryEndpointStore,
    InMemoryEngine,
    InMemoryJobStore,
    InMemoryPublisher,
    InMemoryResultStore,
    api_ports,
)

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
# A public address for the checks (192.88.99.0/24, the deprecated 6to4 relay anycast of RFC 7526: nobody's host);
# nothing is ever sent to it: the one transport here is a recording double.
PUBLIC = "192.88.99.1"

# Every class of address a webhook must never reach, as a literal and behind a name.
REFUSED = {
    "private 10/8": "10.1.2.3", "private 172.16/12": "172.20.0.1", "private 192.168/16": "192.168.1.1",
    "loopback": "127.0.0.1", "loopback v6": "::1", "link-local": "169.254.10.10",
    "metadata server": "169.254.169.254", "link-local v6": "fe80::1", "CGNAT": "100.64.0.1",
    "unique-local": "fd00::1", "multicast": "224.0.0.1", "multicast v6": "ff02::1", "unspecified": "0.0.0.0",
    "mapped loopback": "::ffff:127.0.0.1", "6to4 of a private one": "2002:a00:1::1",
    "NAT64 of the metadata server": "64:ff9b::a9fe:a9fe", "documentation": "203.0.113.10",
}


def resolving(*addresses: str) -> Any:
    def resolve(_host: str, _port: int) -> Sequence[str]:
        return list(addresses)
    return resolve


@pytest.mark.parametrize("address", REFUSED.values(), ids=list(REFUSED))
def test_every_refused_address_class_is_refused_by_literal_and_by_name(address: str) -> None:
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(InvalidRequest) as by_literal:
        check_url(f"https://{literal}/hook", resolve=resolving(PUBLIC), allow_loopback=False)
    with pytest.raises(InvalidRequest) as by_name:  # a name that resolves to it (also beside a public one)
        check_url("https://hooks.receiver.test/hook", resolve=resolving(PUBLIC, address), allow_loopback=False)
    for refused in (by_literal.value, by_name.value):
        assert refused.code == "invalid_webhook_url" and refused.details[0]["field"] == "url"


def test_https_to_public_addresses_only_and_loopback_http_where_allowed() -> None:
    target = check_url("https://hooks.receiver.test:8443/in?x=1", resolve=resolving(PUBLIC), allow_loopback=False)
    assert (target.scheme, target.host, target.port, target.path, target.address) == (
        "https", "hooks.receiver.test", 8443, "/in?x=1", PUBLIC)
    for url in ("http://hooks.receiver.test/in", "ftp://hooks.receiver.test/", "https://user:pw@hooks.receiver.test/",
                "https:///nohost", "https://hooks.receiver.test:99999/"):
        with pytest.raises(InvalidRequest):
            check_url(url, resolve=resolving(PUBLIC), allow_loopback=False)
    assert check_url("http://127.0.0.1:9000/in", resolve=resolving(), allow_loopback=True).address == "127.0.0.1"
    with pytest.raises(InvalidRequest):  # http is for loopback alone, even where loopback is allowed
        check_url("http://hooks.receiver.test/in", resolve=resolving(PUBLIC), allow_loopback=True)
    with pytest.raises(InvalidRequest):
        check_url("http://127.0.0.1:9000/in", resolve=resolving(), allow_loopback=False)


class RecordingTransport(httpx.BaseTransport):
    """A test double standing in for the network: it records each request it is handed and answers in turn."""

    def __init__(self, *statuses: int) -> None:
        self.requests: list[httpx.Request] = []
        self._statuses = list(statuses) or [200]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self._statuses.pop(0) if len(self._statuses) > 1 else self._statuses[0]
        return httpx.Response(status, stream=httpx.ByteStream(b"x" * 100_000))  # a long answer: a few KB are read


def _endpoint(url: str = "https://hooks.receiver.test/in", **changes: Any) -> WebhookEndpoint:
    return WebhookEndpoint(id="we_1", tenant="acme", url=url, events=["job.succeeded"],
                           secrets=[Secret(value="whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", created_at=NOW)],
                           created_at=NOW).model_copy(update=changes)


def _job(status: JobStatus = JobStatus.SUCCEEDED, **changes: Any) -> JobRecord:
    fields: dict[str, Any] = {"id": "job_" + "a" * 32, "tenant": "acme", "status": status, "model": "m",
                              "kind": "completion", "priority": "interactive", "created_at": NOW,
                              "expire_at": NOW + timedelta(days=1), "request_hash": "h", "finished_at": NOW,
                              "metadata": {"k": "v"}}
    return JobRecord.model_validate({**fields, **changes})


class Delivery:
    def __init__(self, *, resolve: Any, statuses: tuple[int, ...] = (200,)) -> None:
        self.endpoints, self.jobs, self.batches = InMemoryEndpointStore(), InMemoryJobStore(), InMemoryBatchStore()
        self.transport = RecordingTransport(*statuses)
        self.deliverer = Deliverer(endpoints=self.endpoints, jobs=self.jobs, batches=self.batches,
                                   sender=HttpSender(resolve=resolve, transport=self.transport),
                                   clock=lambda: datetime.now(UTC))  # signatures are checked against the time
        self.endpoints.create(_endpoint())
        self.jobs.records[_job().id] = _job()
        self.message = DeliveryMessage(endpoint_id="we_1", subject="jobs", subject_id=_job().id, event={
            "id": event_id(_job().id, "job.succeeded"), "object": "event", "type": "job.succeeded",
            "created_at": int(NOW.timestamp()), "data": {"id": _job().id, "status": "succeeded", "metadata": {}}})

    def state(self) -> Any:
        return self.jobs.records[_job().id].webhooks["we_1"]


def test_a_delivery_is_signed_pinned_to_the_checked_address_and_recorded() -> None:
    d = Delivery(resolve=resolving(PUBLIC))
    assert d.deliverer.deliver(d.message) is Outcome.DELIVERED
    (sent,) = d.transport.requests
    # Connected to the address that was checked, the name in Host and TLS SNI: no second resolution.
    assert sent.url.host == PUBLIC and sent.headers["host"] == "hooks.receiver.test"
    assert sent.extensions["sni_hostname"] == "hooks.receiver.test"
    body = Webhook(_endpoint().secrets[0].value).verify(sent.content, dict(sent.headers))
    assert body["type"] == "job.succeeded" and sent.headers["webhook-id"] == d.message.event["id"]
    state = d.state()
    assert state.state == "delivered" and state.attempts == 1 and state.last_status == 200


def test_an_address_that_changed_to_a_refused_one_is_never_connected_to() -> None:
    # Public at registration, the metadata server at delivery (DNS rebinding): refused before any connection.
    d = Delivery(resolve=resolving("169.254.169.254"))
    assert d.deliverer.deliver(d.message) is Outcome.DROPPED
    assert d.transport.requests == []
    assert d.state().state == "given_up" and "link-local" in (d.state().last_error or "")


def test_failures_are_counted_and_410_disables_the_endpoint() -> None:
    d = Delivery(resolve=resolving(PUBLIC), statuses=(500, 503, 410))
    assert d.deliverer.deliver(d.message) is Outcome.RETRY
    assert d.deliverer.deliver(d.message) is Outcome.RETRY
    assert d.state().attempts == 2 and d.state().last_status == 503 and d.state().state == "delivering"
    assert d.deliverer.deliver(d.message) is Outcome.DISABLED
    assert d.endpoints.endpoints["we_1"].status == "disabled" and d.state().state == "given_up"
    assert d.deliverer.deliver(d.message) is Outcome.DROPPED and len(d.transport.requests) == 3


def test_rotation_signs_with_both_secrets_during_the_overlap() -> None:
    old = _endpoint()
    new_secret = "whsec_" + "c2Vjb25kIHNlY3JldCBvZiB0aGlydHktdHdvIGI="
    endpoint = rotated(old, secret=new_secret, now=NOW, overlap=timedelta(hours=1))
    assert endpoint.signing_secrets(NOW) == [new_secret, old.secrets[0].value]
    assert endpoint.signing_secrets(NOW + timedelta(hours=2)) == [new_secret]
    # A delivery now, within an overlap that started now (signatures carry the real time, which receivers check).
    d = Delivery(resolve=resolving(PUBLIC))
    d.endpoints.create(rotated(old, secret=new_secret, now=datetime.now(UTC), overlap=timedelta(hours=1)))
    d.deliverer.deliver(d.message)
    sent = d.transport.requests[0]
    assert len(sent.headers["webhook-signature"].split(" ")) == 2
    for secret in (old.secrets[0].value, new_secret):  # a receiver on either secret verifies it
        Webhook(secret).verify(sent.content, dict(sent.headers))
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "b3RoZXIgc2VjcmV0IG9mIHRoaXJ0eS10d28gYnk=").verify(sent.content, dict(sent.headers))


def test_the_write_that_ends_a_job_or_batch_owes_its_event() -> None:
    running = _job(JobStatus.RUNNING, finished_at=None, lease_owner="d", lease_expires_at=NOW + timedelta(minutes=1))
    completion = lifecycle.Completion(output="x", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1,
                                      total_tokens=2), result_uri=None, metrics={})
    assert lifecycle.complete(running, owner="d", now=NOW, completion=completion).pending_event == "job.succeeded"  # type: ignore[union-attr]
    failed = lifecycle.fail(running, now=NOW, code=JobErrorCode.REJECTED_BY_ENGINE, message="x")
    assert failed is not None and failed.pending_event == "job.failed"
    cancelled = lifecycle.cancel(running, now=NOW)
    assert cancelled is not None and cancelled.pending_event == "job.cancelled"
    batch = BatchRecord.new(batch_id="batch_x", input_uri="gs://b/i", output_prefix=None, now=NOW)
    assert batch.pending_event is None
    ended = batches.fail_input(batch, code="x", message="y", counts=batches.RequestCounts(), now=NOW)
    assert ended.pending_event == "batch.failed"
    assert batches.resume(ended, now=NOW).pending_event is None  # type: ignore[union-attr]


def test_announcing_queues_one_delivery_per_subscribed_endpoint_then_clears_the_outbox() -> None:
    endpoints, queue, store = InMemoryEndpointStore(), InMemoryDeliveryQueue(), InMemoryJobStore()
    endpoints.create(_endpoint())
    endpoints.create(_endpoint(id="we_2", events=["job.failed"]))  # not subscribed to this type
    endpoints.create(_endpoint(id="we_3", status="disabled"))
    endpoints.create(_endpoint(id="we_4", tenant="other"))
    announcer = Announcer(endpoints=endpoints, queue=queue, clock=lambda: NOW)
    job = _job(pending_event="job.succeeded")
    store.records[job.id] = job
    assert announce_job(announcer, store, job) is True
    assert [m.endpoint_id for m in queue.messages] == ["we_1"]
    assert queue.messages[0].event["id"] == event_id(job.id, "job.succeeded")
    assert store.records[job.id].pending_event is None


def test_the_reconciler_announces_what_a_dead_writer_left_owed() -> None:
    endpoints, queue, store, batch_store = (InMemoryEndpointStore(), InMemoryDeliveryQueue(), InMemoryJobStore(),
                                            InMemoryBatchStore())
    endpoints.create(_endpoint())
    announcer = Announcer(endpoints=endpoints, queue=queue, clock=lambda: NOW)
    old, fresh = _job(pending_event="job.succeeded"), _job(id="job_" + "b" * 32, pending_event="job.succeeded",
                                                          finished_at=NOW + timedelta(seconds=50))
    store.records.update({old.id: old, fresh.id: fresh})
    queue.failing = DependencyUnavailable("pubsub down")
    assert announce_job(announcer, store, old) is False and store.records[old.id].pending_event == "job.succeeded"
    queue.failing = None
    report = announce_pending(store, batch_store, announcer, now=NOW + timedelta(minutes=1),
                              ended_for=timedelta(seconds=30))
    # The one ended long enough ago; the fresh one is its writer's to announce for now.
    assert report.announced == 1 and [m.subject_id for m in queue.messages] == [old.id]
    assert store.records[old.id].pending_event is None and store.records[fresh.id].pending_event == "job.succeeded"


# --- the endpoints API through the functions -------------------------------------------------------------


class Api:
    def __init__(self) -> None:
        self.endpoints, self.keys = InMemoryEndpointStore(), InMemoryApiKeyStore()
        self.auth = {tenant: self._key(tenant) for tenant in ("acme", "other")}
        wiring.use_ports(api_ports(endpoints=self.endpoints, api_keys=self.keys, resolve=resolving(PUBLIC)))
        self.submit, self.status = (functions_framework.create_app(
            target=name, source=str(REPO / "functions" / name / "main.py")).test_client() for name in ("submit", "status"))

    def _key(self, tenant: str) -> dict[str, str]:
        key = new_key()
        self.keys.create(ApiKey(key_hash=hash_key(key), tenant=tenant, name="t", created_at=datetime.now(UTC)))
        return {"Authorization": f"Bearer {key}"}

    def create(self, body: dict[str, Any], tenant: str = "acme") -> Any:
        return self.submit.post("/v1/webhook_endpoints", json=body, headers=self.auth[tenant])


@pytest.fixture()
def api() -> Iterator[Api]:
    api_settings.cache_clear()
    try:
        yield Api()
    finally:
        wiring.use_ports(None)
        api_settings.cache_clear()


def test_an_endpoint_shows_its_secret_once_and_belongs_to_its_tenant(api: Api) -> None:
    created = api.create({"url": "https://hooks.receiver.test/in", "events": ["job.succeeded", "batch.completed"],
                          "description": "ci"})
    assert created.status_code == 201, created.text
    endpoint = created.get_json()
    assert endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["batch.completed", "job.succeeded"]
    Webhook(endpoint["secret"])  # a valid Standard Webhooks secret
    listed = api.status.get("/v1/webhook_endpoints", headers=api.auth["acme"]).get_json()
    assert [e["id"] for e in listed["data"]] == [endpoint["id"]] and "secret" not in listed["data"][0]
    got = api.status.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=api.auth["acme"])
    assert got.status_code == 200 and "secret" not in got.get_json()
    assert api.status.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=api.auth["other"]).status_code == 404
    assert api.status.get("/v1/webhook_endpoints", headers=api.auth["other"]).get_json()["data"] == []
    rotated_answer = api.submit.post(f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret",
                                     json={"expire_old_after_seconds": 60}, headers=api.auth["acme"])
    assert rotated_answer.status_code == 200 and rotated_answer.get_json()["secret"] != endpoint["secret"]
    assert len(api.endpoints.endpoints[endpoint["id"]].secrets) == 2
    assert api.submit.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=api.auth["other"]).status_code == 404
    deleted = api.submit.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=api.auth["acme"])
    assert deleted.status_code == 200 and deleted.get_json()["deleted"] is True and api.endpoints.endpoints == {}


@pytest.mark.parametrize("body", [
    {"url": "https://10.0.0.1/in", "events": ["job.failed"]},
    {"url": "http://hooks.receiver.test/in", "events": ["job.failed"]},
    {"url": "https://hooks.receiver.test/in", "events": ["job.exploded"]},
    {"url": "https://hooks.receiver.test/in", "events": []},
    {"url": "https://hooks.receiver.test/in", "events": ["job.failed"], "secret": "mine"},
])
def test_a_refused_endpoint_is_a_400_and_writes_nothing(api: Api, body: dict[str, Any]) -> None:
    response = api.create(body)
    assert response.status_code == 400, response.text
    assert api.endpoints.endpoints == {}


def test_event_ids_are_stable_per_end() -> None:
    assert event_id("job_1", "job.succeeded") == event_id("job_1", "job.succeeded")
    assert event_id("job_1", "job.succeeded") != event_id("job_1", "job.failed") != event_id("job_2", "job.failed")
    assert json.dumps(CreateEndpointRequest(url="https://a.test/x", events=["job.failed"]).model_dump())


def test_the_endpoint_service_checks_names_through_its_resolver() -> None:
    service = EndpointService(store=InMemoryEndpointStore(), resolve=resolving("169.254.169.254"),
                              allow_loopback=False, clock=lambda: NOW)
    with pytest.raises(InvalidRequest):
        service.create(CreateEndpointRequest(url="https://hooks.receiver.test/in", events=["job.failed"]),
                       tenant="acme")


def test_a_redelivery_of_a_finished_job_announces_what_its_first_delivery_could_not() -> None:
    store, endpoints, queue, publisher = InMemoryJobStore(), InMemoryEndpointStore(), InMemoryDeliveryQueue(), \
        InMemoryPublisher()
    endpoints.create(_endpoint(tenant="t"))
    announcer = Announcer(endpoints=endpoints, queue=queue, clock=lambda: NOW)

    async def connect(_settings: RunnerSettings) -> RunnerPorts:
        return RunnerPorts(engine=InMemoryEngine(), store=store, results=InMemoryResultStore(), announcer=announcer)

    JobService(store=store, publisher=publisher, catalog=ModelCatalog([ModelSpec(id="tiny-llama")])).submit(
        JobRequest.model_validate({"prompt": "one two", "max_tokens": 2}), tenant="t", idempotency_key=None)
    message = publisher.published[-1]
    data = base64.b64encode(message.model_dump_json().encode()).decode()
    push = f'{{"message": {{"data": "{data}", "attributes": {{}}}}, "subscription": "s"}}'.encode()
    with TestClient(create_app(RunnerSettings(health_check_interval_seconds=60), connect)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the runner never became ready"
        queue.failing = DependencyUnavailable("pubsub down")  # the end is written; its announcement is not
        assert client.post("/push", content=push).json() == {"outcome": "succeeded"}
        record = store.get(message.job_id)
        assert record is not None and record.status is JobStatus.SUCCEEDED and record.pending_event == "job.succeeded"
        queue.failing = None
        assert client.post("/push", content=push).json() == {"outcome": "already finished"}
    assert [m.event["type"] for m in queue.messages] == ["job.succeeded"]
    assert store.get(message.job_id).pending_event is None  # type: ignore[union-attr]
