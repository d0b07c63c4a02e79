"""Bad input over real HTTP gets the right 4xx with field details, and writes nothing: no
Firestore document, no Pub/Sub message (checked against a canary valid job that follows them)."""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # no py.typed

from scripts.stack_client import Stack

CHAT = [{"role": "user", "content": "hi"}]


def _case(body: Any, code: str, field: str | None = None, status: int = 400) -> Any:
    return pytest.param(body, status, code, field, id=f"{code}:{field or json.dumps(body)[:40]}")


INVALID_BODIES = [
    _case({}, "invalid_request", None),
    _case({"prompt": "x", "messages": CHAT}, "invalid_request", None),
    _case({"prompt": ""}, "string_too_short", "prompt"),
    _case({"prompt": 5}, "string_type", "prompt"),
    _case({"messages": []}, "too_short", "messages"),
    _case({"messages": [{"role": "user"}]}, "missing", "messages[0].content"),
    _case({"messages": [{"role": "robot", "content": "x"}]}, "literal_error", "messages[0].role"),
    _case({"messages": [{"role": "user", "content": 3}]}, "string_type", "messages[0].content"),
    _case({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "unsupported_parameter",
          "messages[0].name"),
    _case({"messages": "hello"}, "list_type", "messages"),
    _case({"prompt": "x", "model": "gpt-9"}, "model_not_found", "model"),
    _case({"prompt": "x", "max_tokens": 0}, "greater_than_equal", "max_tokens"),
    _case({"prompt": "x", "max_tokens": 10**6}, "invalid_request", "max_tokens"),
    _case({"prompt": "x", "max_tokens": "5"}, "int_type", "max_tokens"),
    _case({"prompt": "x", "max_tokens": 5.5}, "int_type", "max_tokens"),
    _case({"prompt": "x", "temperature": 2.5}, "less_than_equal", "temperature"),
    _case({"prompt": "x", "temperature": -0.1}, "greater_than_equal", "temperature"),
    _case({"prompt": "x", "temperature": "hot"}, "float_type", "temperature"),
    _case({"prompt": "x", "top_p": 0}, "greater_than", "top_p"),
    _case({"prompt": "x", "top_p": 1.5}, "less_than_equal", "top_p"),
    _case({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "invalid_request", None),
    _case({"prompt": "x", "stop": [""]}, "string_too_short", "stop"),
    _case({"prompt": "x", "stop": 5}, "invalid_request", "stop"),
    _case({"prompt": "x", "seed": 2**63}, "less_than_equal", "seed"),
    _case({"prompt": "x", "seed": -(2**63) - 1}, "greater_than_equal", "seed"),
    _case({"prompt": "x", "stream": "yes"}, "bool_type", "stream"),
    _case({"prompt": "x", "priority": "urgent"}, "literal_error", "priority"),
    _case({"prompt": "x", "metadata": {"bad key": "v"}}, "string_pattern_mismatch", "metadata.bad key"),
    _case({"prompt": "x", "metadata": {"k": "v" * 513}}, "string_too_long", "metadata.k"),
    _case({"prompt": "x", "metadata": {"k": 1}}, "string_type", "metadata.k"),
    _case({"prompt": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, "invalid_request", None),
    _case({"prompt": "x", "ttl_seconds": 10}, "greater_than_equal", "ttl_seconds"),
    _case({"prompt": "x", "ttl_seconds": 10**9}, "less_than_equal", "ttl_seconds"),
    _case({"prompt": "x", "n": 2}, "literal_error", "n"),
    _case({"prompt": "x", "logit_bias": {"1": 5}}, "unsupported_parameter", "logit_bias"),
    _case({"prompt": "x", "presence_penalty": 2.5}, "less_than_equal", "presence_penalty"),
    _case({"prompt": "x", "frequency_penalty": "1"}, "float_type", "frequency_penalty"),
    _case({"prompt": "x", "response_format": {"type": "xml"}}, "literal_error", "response_format.type"),
    _case({"prompt": "x", "response_format": {"type": "json_schema"}}, "invalid_request", None),
    _case({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"properties": {"__name__": {}}}}}}, "reserved_key", None),
    _case({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
          "literal_error", "messages[0].content[0].type"),
    _case({"messages": [{"role": "tool", "content": "x"}]}, "literal_error", "messages[0].role"),
    _case({"prompt": "x", "max_tokens": 5, "max_completion_tokens": 6}, "invalid_request", None),
    _case({"prompt": "x", "stream_options": {"include_usage": True}}, "invalid_request", None),
    _case({"prompt": "x", "logprobs": True, "tools": []}, "unsupported_parameter", "tools"),
    _case([{"prompt": "x"}], "invalid_request", None),
    _case("just a string", "invalid_request", None),
]


@pytest.fixture(scope="module")
def audit(stack: Stack) -> Iterator[tuple[Any, list[str]]]:
    """A pull subscription on every job topic, to see what gets published."""
    with stack.emulator_env():
        subscriber = pubsub_v1.SubscriberClient()
        names = []
        for topic in stack.info["topics"]:
            name = subscriber.subscription_path(stack.project, f"audit-{topic}-{uuid.uuid4().hex[:6]}")
            subscriber.create_subscription(name=name, topic=f"projects/{stack.project}/topics/{topic}")
            names.append(name)
        yield subscriber, names
        for name in names:
            subscriber.delete_subscription(subscription=name)


def _job_count(db: Any) -> int:
    return sum(1 for _ in db.collection("jobs").list_documents())


def _assert_error(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "type", "param"}  # CONTRACT §1, plus OpenAI's (§8)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code or any(d["code"] == code for d in body["error"]["details"]), body
    return body["error"]


def _submit_raw(stack: Stack, http: httpx.Client, content: bytes, content_type: str | None) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return http.post(f"{stack.info['submit_url']}/v1/jobs", content=content, headers=headers)


@pytest.mark.parametrize(("body", "status", "code", "field"), INVALID_BODIES)
def test_invalid_body_is_rejected_with_details(stack: Stack, http: httpx.Client, body: Any, status: int,
                                               code: str, field: str | None) -> None:
    error = _assert_error(stack.submit(http, body), status, code)
    if field is not None:
        assert field in [d["field"] for d in error["details"]], error


def test_unknown_field_is_named(stack: Stack, http: httpx.Client) -> None:
    error = _assert_error(stack.submit(http, {"prompt": "x", "frequency_penaltyy": 1}), 400, "unsupported_parameter")
    assert "frequency_penaltyy" in error["message"]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"", "application/json", 400, "invalid_json"),
        (b"null", "application/json", 400, "invalid_request"),
        (b"{not json", "application/json", 400, "invalid_json"),
        (b'{"prompt": "\xff\xfe"}', "application/json", 400, "invalid_json"),
        (b"[" * 100 + b"]" * 100, "application/json", 400, "invalid_json"),
        (b'{"prompt": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"prompt": "x"}', None, 415, "unsupported_media_type"),
        (b'{"prompt": "' + b"x" * (1024 * 1024 + 10) + b'"}', "application/json", 413, "payload_too_large"),
    ],
    ids=["empty", "null", "not-json", "not-utf8", "too-deep", "text-plain", "no-content-type", "too-large"],
)
def test_malformed_body(stack: Stack, http: httpx.Client, content: bytes, content_type: str | None,
                        status: int, code: str) -> None:
    _assert_error(_submit_raw(stack, http, content, content_type), status, code)


def test_wrong_method_and_unknown_route(stack: Stack, http: httpx.Client) -> None:
    _assert_error(http.get(f"{stack.info['submit_url']}/v1/jobs"), 405, "method_not_allowed")
    _assert_error(http.post(f"{stack.info['status_url']}/v1/jobs/job_x"), 405, "method_not_allowed")
    _assert_error(http.get(f"{stack.info['submit_url']}/v2/things"), 404, "not_found")


@pytest.mark.parametrize("job_id", ["nope", "job_" + "0" * 32, "job_" + "g" * 32, "../jobs"])
def test_unknown_or_malformed_job_id_is_404(stack: Stack, http: httpx.Client, job_id: str) -> None:
    _assert_error(http.get(f"{stack.info['status_url']}/v1/jobs/{job_id}"), 404, "not_found")


@pytest.mark.parametrize("wait", ["-1", "61", "soon", "nan"])
def test_bad_wait_is_400(stack: Stack, http: httpx.Client, wait: str) -> None:
    ok = stack.submit(http, {"prompt": "x", "max_tokens": 1}).json()
    _assert_error(stack.job(http, ok["id"], wait=wait), 400, "out_of_range")


def test_idempotency_header_and_field_must_agree(stack: Stack, http: httpx.Client) -> None:
    response = stack.submit(http, {"prompt": "x", "idempotency_key": "a"}, headers={"Idempotency-Key": "b"})
    _assert_error(response, 400, "mismatch")


def test_rejected_requests_write_nothing(stack: Stack, http: httpx.Client, db: Any, audit: Any) -> None:
    subscriber, subscriptions = audit
    before = _job_count(db)
    for body, *_ in [p.values for p in INVALID_BODIES]:
        assert stack.submit(http, body).status_code in (400, 413, 415)
    assert _submit_raw(stack, http, b"{bad", "application/json").status_code == 400
    assert _submit_raw(stack, http, b'{"prompt":"x"}', "text/plain").status_code == 415
    # A valid canary: once it is visible everywhere, anything the rejects wrote would be too.
    canary = stack.submit(http, {"prompt": "canary", "max_tokens": 1, "metadata": {"canary": "yes"}})
    assert canary.status_code == 202
    assert _job_count(db) == before + 1
    received: list[str] = []
    deadline = time.monotonic() + 60
    while canary.json()["id"] not in received and time.monotonic() < deadline:
        for name in subscriptions:
            received += _pull(subscriber, name)
    assert received == [canary.json()["id"]]


def _pull(subscriber: Any, subscription: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # return_immediately: the emulator honours it
        response = subscriber.pull(subscription=subscription, max_messages=100, return_immediately=True, timeout=10)
    if response.received_messages:
        subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
    return [json.loads(m.message.data)["job_id"] for m in response.received_messages]
