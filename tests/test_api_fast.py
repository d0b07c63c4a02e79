"""Fast tier: the submit and status functions through functions-framework's own test client, over in-memory
ports (tests/memory.py, installed with jobs.adapters.wiring.use_ports): routing, authentication, the error
mapping and the job's life as the API shows it. The emulator suite checks the same routes on real parts."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from flask.testing import FlaskClient

from jobs import lifecycle
from jobs.adapters import wiring
from jobs.auth import ApiKey, hash_key, new_key
from jobs.errors import DependencyUnavailable
from jobs.models import Usage
from jobs.settings import api_settings
from jobs.state import JobStatus
from tests.id_tokens import Signer, serving_certs
from tests.memory import (
    InMemoryApiKeyStore,
    InMemoryJobStore,
    InMemoryPublisher,
    api_ports,
)

REPO = Path(__file__).resolve().parents[1]


class Api:
    def __init__(self) -> None:
        self.key = new_key()
        self.store, self.publisher = InMemoryJobStore(), InMemoryPublisher()
        self.keys = keys = InMemoryApiKeyStore(ApiKey(key_hash=hash_key(self.key), tenant="acme", name="test",
                                          created_at=datetime.now(UTC)))
        wiring.use_ports(api_ports(jobs=self.store, publisher=self.publisher, api_keys=keys))
        self.submit = _client("submit")
        self.status = _client("status")
        self.auth = {"Authorization": f"Bearer {self.key}"}

    def create(self, body: dict[str, Any] | None = None, *, idempotency_key: str | None = None) -> Any:
        headers = {**self.auth, **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
        return self.submit.post("/v1/jobs", json=body or {"prompt": "hello", "max_tokens": 4}, headers=headers)


def _client(name: str) -> FlaskClient:
    app = functions_framework.create_app(target=name, source=str(REPO / "functions" / name / "main.py"))
    return app.test_client()


@pytest.fixture()
def api() -> Iterator[Api]:
    yield Api()
    wiring.use_ports(None)


def test_submit_stores_publishes_and_the_status_function_reads_it_back(api: Api) -> None:
    created = api.create()
    assert created.status_code == 202, created.text
    job = created.get_json()
    assert created.headers["Location"] == f"/v1/jobs/{job['id']}" and job["status"] == "queued"
    assert [m.job_id for m in api.publisher.published] == [job["id"]]
    read = api.status.get(f"/v1/jobs/{job['id']}", headers=api.auth)
    assert read.status_code == 200 and read.get_json() == job


def test_an_idempotent_resubmission_returns_the_first_job(api: Api) -> None:
    first = api.create(idempotency_key="k-1")
    again = api.create(idempotency_key="k-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.get_json()["id"] == again.get_json()["id"] and len(api.publisher.published) == 1
    conflict = api.create({"prompt": "something else"}, idempotency_key="k-1")
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"prompt": ""}, "prompt", "string_too_short"),
    ({"prompt": "x", "logit_bias": {"1": 5}}, "logit_bias", "unsupported_parameter"),
    ({"prompt": "x", "n": 2}, "n", "literal_error"),  # one choice per request: a clear 400 naming `n`
    ({"prompt": "x", "stop": [""]}, "stop[0]", "string_too_short"),
    ({"prompt": "x", "metadata": {"bad key": "v"}}, "metadata.bad key", "string_pattern_mismatch"),
    # Metadata keys become Firestore field names; Firestore reserves __name__-like ones.
    ({"prompt": "x", "metadata": {"__name__": "v"}}, "metadata.__name__", "reserved_key"),
    ({"prompt": "x", "metadata": {"__x__": "v"}}, "metadata.__x__", "reserved_key"),
])
def test_bad_input_is_a_400_with_field_details_and_writes_nothing(
        api: Api, body: dict[str, Any], field: str, code: str) -> None:
    answer = api.create(body)
    assert answer.status_code == 400, answer.text
    assert {"field": field, "code": code} in [{k: d[k] for k in ("field", "code")}
                                             for d in answer.get_json()["error"]["details"]]
    assert api.store.records == {} and api.publisher.published == []


def test_a_failed_publish_undoes_the_submit_and_answers_503(api: Api) -> None:
    api.publisher.failing = DependencyUnavailable("pubsub is down")
    answer = api.create()
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1
    assert answer.get_json()["error"]["code"] == "unavailable" and api.store.records == {}


@pytest.mark.parametrize("authorization", [None, "Bearer llmq_not-a-key", "Basic abc"])
def test_no_or_bad_key_is_401_before_anything_is_read(api: Api, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = api.submit.post("/v1/jobs", json={"prompt": "x"}, headers=headers)
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.store.records == {}


@pytest.mark.parametrize("job_id", ["job_" + "0" * 32, "__x__", "..", "a" * 2000, "job_%2Fx"])
def test_an_unknown_or_malformed_job_id_is_404(api: Api, job_id: str) -> None:
    for answer in (api.status.get(f"/v1/jobs/{job_id}", headers=api.auth),
                   api.submit.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth)):
        assert answer.status_code == 404, answer.text
        assert answer.get_json()["error"]["code"] == "not_found"


def test_another_tenants_job_is_404(api: Api) -> None:
    job = api.create().get_json()
    other = new_key()
    api.keys.create(ApiKey(key_hash=hash_key(other), tenant="other", name="t", created_at=datetime.now(UTC)))
    answer = api.status.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {other}"})
    assert answer.status_code == 404


def test_cancel_ends_a_queued_job_and_wait_returns_once_it_is_final(api: Api) -> None:
    job = api.create().get_json()
    cancelled = api.submit.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth)
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    waited = api.status.get(f"/v1/jobs/{job['id']}?wait=5", headers=api.auth)
    assert waited.get_json()["status"] == "cancelled"


def test_wait_holds_until_the_job_finishes(api: Api) -> None:
    job = api.create().get_json()
    now = datetime.now(UTC)
    claimed = lifecycle.decide_claim(api.store.records[job["id"]], owner="d", instance="i", now=now, lease_seconds=30)
    assert claimed.record is not None
    api.store.records[job["id"]] = claimed.record
    completion = lifecycle.Completion(output="out", finish_reason="stop", usage=Usage(
        prompt_tokens=1, completion_tokens=1, total_tokens=2), result_uri=None, metrics={})

    def finish_once_waited_on() -> None:
        assert api.store.waiting.wait(10)
        api.store.update(job["id"], lambda r: lifecycle.complete(r, owner="d", now=now, completion=completion))

    finisher = threading.Thread(target=finish_once_waited_on)
    finisher.start()
    waited = api.status.get(f"/v1/jobs/{job['id']}?wait=10", headers=api.auth)
    finisher.join()
    assert waited.get_json()["status"] == "succeeded" and waited.get_json()["output"] == "out"
    assert api.store.records[job["id"]].status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
def test_a_bad_wait_is_400(api: Api, wait: str) -> None:
    job = api.create().get_json()
    answer = api.status.get(f"/v1/jobs/{job['id']}?wait={wait}", headers=api.auth)
    assert answer.status_code == 400 and answer.get_json()["error"]["details"][0]["field"] == "wait"


def test_routes_methods_models_and_the_open_api_document(api: Api) -> None:
    assert api.status.get("/openapi.json").get_json()["openapi"].startswith("3.")
    assert api.submit.get("/openapi.json").status_code == 200
    models = api.status.get("/v1/models", headers=api.auth).get_json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-llama"
    assert api.submit.get("/v1/jobs", headers=api.auth).status_code == 405
    assert api.status.post("/v1/models", headers=api.auth).status_code == 405
    assert api.status.get("/v1/nothing", headers=api.auth).status_code == 404
    wrong_type = api.submit.post("/v1/jobs", data="prompt=x", headers={**api.auth, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415


WORKFLOW_ACCOUNT = "llmq-workflow@llmq-test.iam.gserviceaccount.com"
TOKEN_AUDIENCE = "llmq-api"


@contextmanager
def api_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[Api]:
    """The functions over in-memory ports, with these LLMQ_ settings."""
    for name, value in env.items():
        monkeypatch.setenv(f"LLMQ_{name.upper()}", value)
    api_settings.cache_clear()
    try:
        yield Api()
    finally:
        wiring.use_ports(None)
        monkeypatch.undo()
        api_settings.cache_clear()


@pytest.fixture()
def token_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Api, Signer]]:
    """api_key mode on a public API: the nightly workflow's ID tokens (signed here) verified by the function."""
    signer = Signer("google-key-fast")
    with serving_certs(signer) as certs_url, api_with(
            monkeypatch, token_tenants=json.dumps({WORKFLOW_ACCOUNT: "nightly"}), token_checked_by="function",
            token_audience=TOKEN_AUDIENCE, token_certs_url=certs_url) as api:
        yield api, signer


def _iam_verified(claims: dict[str, object]) -> str:
    """A token as the function sees it behind Cloud Run IAM: verified at the door, its signature stripped."""
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"Bearer header.{part}."


def test_iam_mode_takes_the_tenant_from_the_token_iam_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with api_with(monkeypatch, auth_mode="iam", iam_tenants=json.dumps({"a@example.com": "acme"})) as api:
        for email, tenant in (("a@example.com", "acme"), ("ci@p.iam.gserviceaccount.com", "ci@p.iam.gserviceaccount.com")):
            answer = api.submit.post("/v1/jobs", json={"prompt": "x"}, headers={"Authorization": _iam_verified({"email": email})})
            assert answer.status_code == 202
            assert api.store.records[answer.get_json()["id"]].tenant == tenant
        # With X-Serverless-Authorization, that is the header IAM checked; Authorization passed unchecked.
        forged = {"X-Serverless-Authorization": _iam_verified({"email": "ci@p.iam.gserviceaccount.com"}),
                  "Authorization": _iam_verified({"email": "a@example.com"})}
        answer = api.submit.post("/v1/jobs", json={"prompt": "x"}, headers=forged)
        assert api.store.records[answer.get_json()["id"]].tenant == "ci@p.iam.gserviceaccount.com"
        for bad in ("Bearer", "Bearer x", _iam_verified({"sub": "no email"}), "Basic abc"):
            assert api.submit.post("/v1/jobs", json={"prompt": "x"}, headers={"Authorization": bad}).status_code == 401


def test_behind_iam_the_workflows_token_acts_as_its_tenant_and_nobody_elses(monkeypatch: pytest.MonkeyPatch) -> None:
    with api_with(monkeypatch, token_tenants=json.dumps({WORKFLOW_ACCOUNT: "nightly"})) as api:  # checked by Cloud Run
        answer = api.submit.post("/v1/jobs", json={"prompt": "x"},
                                 headers={"Authorization": _iam_verified({"email": WORKFLOW_ACCOUNT})})
        assert answer.status_code == 202 and api.store.records[answer.get_json()["id"]].tenant == "nightly"
        # Another invoker's token, or a forged Authorization beside the token IAM checked: no tenant.
        other = _iam_verified({"email": "someone@p.iam.gserviceaccount.com"})
        for headers in ({"Authorization": other},
                        {"X-Serverless-Authorization": other,
                         "Authorization": _iam_verified({"email": WORKFLOW_ACCOUNT})}):
            assert api.submit.post("/v1/jobs", json={"prompt": "x"}, headers=headers).status_code == 401
        assert api.create().status_code == 202  # keys still work


def test_the_workflows_id_token_acts_as_its_tenant_and_keys_still_work(token_api: tuple[Api, Signer]) -> None:
    api, signer = token_api
    token = {"Authorization": f"Bearer {signer.token(aud=TOKEN_AUDIENCE, email=WORKFLOW_ACCOUNT)}"}
    created = api.submit.post("/v1/jobs", json={"prompt": "nightly"}, headers=token)
    assert created.status_code == 202, created.text
    assert api.store.records[created.get_json()["id"]].tenant == "nightly"
    assert api.create().status_code == 202  # a key still works beside tokens


@pytest.mark.parametrize("claims", [
    {"aud": "another-audience", "email": WORKFLOW_ACCOUNT},  # a token minted for another service
    {"aud": TOKEN_AUDIENCE, "email": "someone-else@llmq-test.iam.gserviceaccount.com"},  # not an allowed account
    {"aud": TOKEN_AUDIENCE, "email": WORKFLOW_ACCOUNT, "email_verified": False},
    {"aud": TOKEN_AUDIENCE, "email": WORKFLOW_ACCOUNT, "exp": 1},  # expired
])
def test_other_id_tokens_are_401_and_write_nothing(token_api: tuple[Api, Signer], claims: dict[str, Any]) -> None:
    api, signer = token_api
    forged = {"Authorization": f"Bearer {signer.token(**claims)}"}
    answer = api.submit.post("/v1/jobs", json={"prompt": "nightly"}, headers=forged)
    assert answer.status_code == 401 and api.store.records == {}


@pytest.mark.parametrize("impostor", ["google-key-fast", "another-key"])
def test_a_token_signed_by_another_key_is_401(token_api: tuple[Api, Signer], impostor: str) -> None:
    api, _ = token_api  # an impostor's key, under the trusted key's id or its own: no certificate matches
    token = Signer(impostor).token(aud=TOKEN_AUDIENCE, email=WORKFLOW_ACCOUNT)
    answer = api.submit.post("/v1/jobs", json={"prompt": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401 and api.store.records == {}


def test_a_token_from_another_issuer_is_401(token_api: tuple[Api, Signer]) -> None:
    api, signer = token_api
    token = signer.token(aud=TOKEN_AUDIENCE, email=WORKFLOW_ACCOUNT, iss="https://issuer.example.test")
    answer = api.submit.post("/v1/jobs", json={"prompt": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401


def test_without_token_tenants_a_token_is_just_a_bad_key(api: Api) -> None:
    signer = Signer("google-key-unused")
    token = {"Authorization": f"Bearer {signer.token(aud=TOKEN_AUDIENCE, email=WORKFLOW_ACCOUNT)}"}
    assert api.submit.post("/v1/jobs", json={"prompt": "x"}, headers=token).status_code == 401


def test_a_model_alias_runs_the_served_model_and_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    with api_with(monkeypatch, model_aliases=json.dumps({"gpt-4o-mini": "tiny-llama"})) as api:
        created = api.create({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o-mini"})
        assert created.status_code == 202, created.text
        assert created.get_json()["model"] == "tiny-llama"  # the job records the served model, not the alias
        assert api.publisher.published[-1].model == "tiny-llama"
        listed = {m["id"]: m for m in api.status.get("/v1/models", headers=api.auth).get_json()["data"]}
        assert listed["gpt-4o-mini"]["alias_of"] == "tiny-llama" and "alias_of" not in listed["tiny-llama"]
        unknown = api.create({"prompt": "x", "model": "gpt-9"})
        assert unknown.status_code == 400 and unknown.get_json()["error"]["code"] == "model_not_found"
        assert "tiny-llama" in unknown.get_json()["error"]["message"]
        assert "gpt-4o-mini (= tiny-llama)" in unknown.get_json()["error"]["message"]


@pytest.mark.parametrize("aliases", [{"gpt-4o-mini": "not-served"}, {"tiny-llama": "tiny-llama"}])
def test_an_alias_of_nothing_served_is_refused_at_start(aliases: dict[str, str]) -> None:
    from pydantic import ValidationError

    from jobs.settings import ApiSettings

    with pytest.raises(ValidationError, match="alias"):
        ApiSettings(model_aliases=aliases)


@pytest.mark.parametrize(("status", "openai_type"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                                     (404, "not_found_error"), (409, "conflict_error")])
def test_errors_carry_openais_type_and_param(api: Api, status: int, openai_type: str) -> None:
    if status == 400:
        answer = api.create({"prompt": "x", "temperature": 9})
    elif status == 401:
        answer = api.submit.post("/v1/jobs", json={"prompt": "x"})
    elif status == 404:
        answer = api.status.get("/v1/nothing/here", headers=api.auth)
    else:
        api.create(idempotency_key="k")
        answer = api.create({"prompt": "another"}, idempotency_key="k")
    error = answer.get_json()["error"]
    assert answer.status_code == status and error["type"] == openai_type
    assert error["param"] == ("temperature" if status == 400 else None)


def test_openai_messages_and_parameters_are_taken(api: Api) -> None:
    body = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                         {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}],
            "max_completion_tokens": 7, "n": 1, "user": "end-user-42", "stream": True,
            "stream_options": {"include_usage": True}}
    created = api.create(body)
    assert created.status_code == 202, created.text
    message = api.publisher.published[-1]
    assert message.request.max_tokens == 7 and message.request.user == "end-user-42"
    generation = message.request.to_generation("r")
    assert [(t.role, t.content) for t in generation.messages or ()] == [("system", "Be brief."), ("user", "Hi\nthere")]

