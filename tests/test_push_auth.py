"""Push authentication against a real runner process: only pushes whose OIDC token verifies for
the configured audience, issuer and push service account are processed. The test signs its own
tokens and serves their certificates locally (tests/id_tokens.py)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from scripts.stack_client import Stack
from tests.faults import JobFactory, create_push_topic, extra_runner
from tests.id_tokens import AUDIENCE, PUSH_ACCOUNT, Signer, serving_certs


@pytest.fixture(scope="module")
def google_signer() -> Signer:
    return Signer("google-key-1")


@pytest.fixture(scope="module")
def certs_url(google_signer: Signer) -> Iterator[str]:
    with serving_certs(google_signer) as url:
        yield url


@pytest.fixture(scope="module")
def secured_runner(stack: Stack, certs_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with extra_runner(stack, tmp_path_factory.mktemp("secured"), push_audience=AUDIENCE,
                      push_service_account=PUSH_ACCOUNT, push_certs_url=certs_url) as url:
        yield url


def _envelope(job_id: str, data: str) -> dict[str, Any]:
    return {"message": {"data": data, "attributes": {"job_id": job_id}, "messageId": "1",
                        "publishTime": "2026-11-23T00:00:00Z"},
            "subscription": "projects/p/subscriptions/s"}


def _job(stack: Stack) -> tuple[str, dict[str, Any]]:
    message = JobFactory(stack, create_push_topic(stack, [])).submit({"prompt": "signed", "max_tokens": 4})
    return message.job_id, _envelope(message.job_id, base64.b64encode(message.model_dump_json().encode()).decode())


@pytest.mark.parametrize("case", ["no token", "not bearer", "garbage", "wrong audience", "wrong signer",
                                  "expired", "wrong account", "unverified email", "wrong issuer"])
def test_forged_pushes_are_rejected(stack: Stack, secured_runner: str, google_signer: Signer, case: str) -> None:
    job_id, envelope = _job(stack)
    impostor = Signer(google_signer.key_id)  # same key id, another key: a forged signature
    tokens = {
        "no token": None,
        "not bearer": f"Basic {google_signer.token()}",
        "garbage": "Bearer not.a.jwt",
        "wrong audience": f"Bearer {google_signer.token(aud='https://elsewhere.example.test')}",
        "wrong signer": f"Bearer {impostor.token()}",
        "expired": f"Bearer {google_signer.token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)}",
        "wrong account": f"Bearer {google_signer.token(email='someone@evil.example.test')}",
        "unverified email": f"Bearer {google_signer.token(email_verified=False)}",
        "wrong issuer": f"Bearer {google_signer.token(iss='https://issuer.example.test')}",
    }
    token = tokens[case]
    headers = {"Authorization": token} if token else {}
    response = httpx.post(secured_runner, json=envelope, headers=headers, timeout=30)
    assert response.status_code == 401, response.text
    # Nothing was done with the job.
    assert stack.firestore().collection("jobs").document(job_id).get().to_dict()["attempts"] == 0


def test_valid_signed_push_is_processed(stack: Stack, secured_runner: str, google_signer: Signer) -> None:
    job_id, envelope = _job(stack)
    response = httpx.post(secured_runner, json=envelope, timeout=60,
                          headers={"Authorization": f"Bearer {google_signer.token()}"})
    assert response.status_code == 200, response.text
    doc = stack.firestore().collection("jobs").document(job_id).get().to_dict()
    assert doc["status"] == "succeeded" and doc["attempts"] == 1


def test_runner_without_an_audience_is_open_locally(stack: Stack) -> None:
    # The local stack's runner has no audience configured: pushes need no token (documented).
    _, envelope = _job(stack)
    response = httpx.post(f"{stack.info['runner_url']}/push", json=envelope, timeout=60)
    assert response.status_code == 200, response.text
