"""Push authentication against a real runner process: only pushes whose OIDC token verifies for
the configured audience, issuer and push service account are processed. The test signs its own
tokens and serves their certificates locally (the runner's certificate URL is a setting)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from scripts.stack_client import Stack
from tests.faults import JobFactory, create_push_topic, extra_runner

AUDIENCE = "https://runner.example.test/push"
PUSH_ACCOUNT = "push-invoker@llmq-test.iam.gserviceaccount.com"


class Signer:
    """An RSA key with a self-signed certificate, as Google publishes for its token signers."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key_id)])
        now = datetime.now(UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))

    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "iat": now, "exp": now + 600,
                  "email": PUSH_ACCOUNT, "email_verified": True, "sub": "1234"}
        claims.update(overrides)
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        return jwt.encode(crypt.RSASigner.from_string(pem, key_id=self.key_id), claims).decode()


@pytest.fixture(scope="module")
def google_signer() -> Signer:
    return Signer("google-key-1")


@pytest.fixture(scope="module")
def certs_url(google_signer: Signer) -> Iterator[str]:
    body = json.dumps({google_signer.key_id: google_signer.cert_pem()}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    server.shutdown()
    server.server_close()


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
