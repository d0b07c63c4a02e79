"""Signed webhooks on the local stack, received by a real HTTP server of the test's own on 127.0.0.1: the
signatures checked with `standardwebhooks` and OpenAI's SDK, retries under one webhook-id, a receiver that is
down given up on the document, an event that survives the runner killed between finishing its job and
announcing it, refused addresses, and a deleted endpoint that receives nothing more."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from standardwebhooks import Webhook

from jobs.adapters.api_key_store import FirestoreApiKeyStore
from scripts.api_keys import create_key
from scripts.processes import free_port
from scripts.stack_client import JobWatcher, Stack
from tests.batch_helpers import completion_line, jsonl
from tests.faults import JobFactory, create_push_topic, extra_runner_process
from tests.test_webhooks_fast import REFUSED

pytestmark = pytest.mark.timeout(300)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A webhook receiver: records every request; answers each path from its script (then 200)."""

    server: ThreadingHTTPServer
    scripts: dict[str, list[int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait(self, count: int, *, path: str | None = None, timeout: float = 90) -> list[Received]:
        def mine() -> list[Received]:
            return [r for r in self.received if path is None or r.path == path]

        with self.changed:
            assert self.changed.wait_for(lambda: len(mine()) >= count, timeout), \
                f"{len(mine())} of {count} deliveries to {path} within {timeout}s"
            return mine()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            box = state["receiver"]
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with box.changed:
                box.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                script = box.scripts.get(self.path, [])
                status = script.pop(0) if script else 200
                box.changed.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["receiver"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["receiver"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def tenant(db: Any) -> tuple[str, str]:
    """A tenant of the test's own (its endpoints get no other test's events): (tenant, key)."""
    name = f"hooks-{uuid.uuid4().hex[:8]}"
    return name, create_key(FirestoreApiKeyStore(db), tenant=name, name="webhooks")


def _api(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=str(stack.info["api_url"]), headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _endpoint(api: httpx.Client, url: str, events: list[str]) -> dict[str, Any]:
    response = api.post("/v1/webhook_endpoints", json={"url": url, "events": events})
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


def _run_job(api: httpx.Client) -> dict[str, Any]:
    created = api.post("/v1/jobs", json={"prompt": "Tell the webhook receiver a short story", "max_tokens": 4})
    assert created.status_code == 202, created.text
    done = api.get(f"/v1/jobs/{created.json()['id']}", params={"wait": 60}).json()
    assert done["status"] == "succeeded", done
    return dict(done)


def _delivery_state(api: httpx.Client, job_id: str, endpoint_id: str, until: set[str], timeout: float = 90) -> Any:
    """The job's delivery to an endpoint once it is in one of `until` (the document, read back over HTTP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.get(f"/v1/jobs/{job_id}").json()["webhooks"].get(endpoint_id)
        if state is not None and state["state"] in until:
            return state
        time.sleep(0.5)
    raise AssertionError(f"delivery to {endpoint_id} not {until} within {timeout}s")


def test_events_are_signed_per_standard_webhooks_and_read_by_openais_sdk(stack: Stack, receiver: Receiver,
                                                                          tenant: tuple[str, str]) -> None:
    with _api(stack, tenant[1]) as api:
        endpoint = _endpoint(api, f"{receiver.url}/hooks", ["job.succeeded", "batch.cancelled"])
        job = _run_job(api)
        (delivery,) = receiver.wait(1)
        event = Webhook(endpoint["secret"]).verify(delivery.body, delivery.headers)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
        assert delivery.headers["webhook-id"] == event["id"] and event["object"] == "event"
        sdk = openai.OpenAI(api_key="unused", base_url=str(stack.info["api_url"]) + "/v1")
        sdk.webhooks.verify_signature(delivery.body, delivery.headers, secret=endpoint["secret"])
        state = _delivery_state(api, job["id"], endpoint["id"], {"delivered"})
        assert state["attempts"] == 1 and state["last_status"] == 200 and state["event_id"] == event["id"]

        # A batch cancelled at once (its runner ends it without loading the model): OpenAI's own event type,
        # which the SDK's unwrap parses into its typed event.
        batch = api.post("/v1/batches", json={"input_jsonl": jsonl([completion_line("a", "x")])}).json()
        assert api.post(f"/v1/batches/{batch['id']}/cancel").status_code == 200
        batch_delivery = receiver.wait(2)[1]
        unwrapped = sdk.webhooks.unwrap(batch_delivery.body, batch_delivery.headers, secret=endpoint["secret"])
        assert unwrapped.type == "batch.cancelled" and unwrapped.data.id == batch["id"]


def test_a_receiver_that_fails_twice_gets_one_event_in_three_attempts(stack: Stack, receiver: Receiver,
                                                                    tenant: tuple[str, str]) -> None:
    receiver.scripts["/flaky"] = [500, 500]
    with _api(stack, tenant[1]) as api:
        endpoint = _endpoint(api, f"{receiver.url}/flaky", ["job.succeeded"])
        job = _run_job(api)
        attempts = receiver.wait(3, path="/flaky")
        assert len({a.headers["webhook-id"] for a in attempts}) == 1  # one logical event
        assert all(Webhook(endpoint["secret"]).verify(a.body, a.headers)["data"]["id"] == job["id"] for a in attempts)
        state = _delivery_state(api, job["id"], endpoint["id"], {"delivered"})
        assert state["attempts"] == 3 and state["last_status"] == 200


def test_a_receiver_that_is_down_ends_given_up_on_the_document(stack: Stack, tenant: tuple[str, str]) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/hooks"
    with _api(stack, tenant[1]) as api:
        endpoint = _endpoint(api, down, ["job.succeeded"])
        job = _run_job(api)
        state = _delivery_state(api, job["id"], endpoint["id"], {"given_up"}, timeout=150)
        assert state["attempts"] >= 4 and state["last_status"] is None and state["last_error"]


def test_every_refused_address_class_is_a_400_at_registration(stack: Stack, tenant: tuple[str, str]) -> None:
    with _api(stack, tenant[1]) as api:
        for name, address in REFUSED.items():
            if name in ("loopback", "loopback v6", "mapped loopback"):
                continue  # the local stack allows loopback (its tests' receivers); refused elsewhere (fast tier)
            literal = f"[{address}]" if ":" in address else address
            response = api.post("/v1/webhook_endpoints", json={"url": f"https://{literal}/x", "events": ["job.failed"]})
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"]["code"] == "invalid_webhook_url", name
        assert api.get("/v1/webhook_endpoints").json()["data"] == []


def test_a_deleted_endpoint_receives_nothing_more(stack: Stack, receiver: Receiver, tenant: tuple[str, str]) -> None:
    with _api(stack, tenant[1]) as api:
        gone = _endpoint(api, f"{receiver.url}/gone", ["job.succeeded"])
        kept = _endpoint(api, f"{receiver.url}/kept", ["job.succeeded"])
        assert api.delete(f"/v1/webhook_endpoints/{gone['id']}").status_code == 200
        job = _run_job(api)
        receiver.wait(1, path="/kept")
        _delivery_state(api, job["id"], kept["id"], {"delivered"})
        assert [r for r in receiver.received if r.path == "/gone"] == []
        assert list(api.get(f"/v1/jobs/{job['id']}").json()["webhooks"]) == [kept["id"]]


def test_the_runner_killed_between_finishing_a_job_and_announcing_it(stack: Stack, db: Any, receiver: Receiver,
                                                                    tenant: tuple[str, str], tmp_path: Path) -> None:
    # A runner whose Pub/Sub is a port that accepts and never answers: its announcement hangs after the job's
    # ending write; it is killed there. The event, owed in the job's document, is announced by the reconciler.
    blackhole = socket.create_server(("127.0.0.1", free_port()))
    try:
        with _api(stack, tenant[1]) as api:
            endpoint = _endpoint(api, f"{receiver.url}/survives", ["job.succeeded"])
            with extra_runner_process(stack, tmp_path, environment={
                    "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{blackhole.getsockname()[1]}"}) as (runner_url, runner):
                jobs = JobFactory(stack, create_push_topic(stack, [runner_url]))
                jobs.tenant = tenant[0]
                message = jobs.submit({"prompt": "Tell the webhook receiver a short story", "max_tokens": 4})
                with JobWatcher(db, [message.job_id]) as watcher:
                    assert watcher.wait(120)
                    doc = watcher.latest(message.job_id)
                # Killed (the whole group, as a lost instance) while its announcement hangs.
                os.killpg(runner.pid, signal.SIGKILL)
                assert doc is not None and doc["status"] == "succeeded" and doc["pending_event"] == "job.succeeded"
                assert receiver.received == []
            swept = httpx.post(f"{stack.info['reconcile_url']}/", json={"announce_after_seconds": 0}, timeout=60)
            assert swept.status_code == 200 and swept.json()["announced"] >= 1, swept.text
            (delivery,) = receiver.wait(1, path="/survives")
            assert Webhook(endpoint["secret"]).verify(delivery.body, delivery.headers)["data"]["id"] == message.job_id
            assert api.get(f"/v1/jobs/{message.job_id}").json()["status"] == "succeeded"
            assert db.collection("jobs").document(message.job_id).get().get("pending_event") is None
    finally:
        blackhole.close()
