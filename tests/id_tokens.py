"""Google-style ID tokens for tests: an RSA signer with a self-signed certificate, as Google publishes for its
token signers, and a local server for the certificates (the verifiers' certificate URL is a setting)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

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

    def token(self, *, aud: str = AUDIENCE, email: str = PUSH_ACCOUNT, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": "https://accounts.google.com", "aud": aud, "iat": now, "exp": now + 600,
                  "email": email, "email_verified": True, "sub": "1234"}
        claims.update(overrides)
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        return jwt.encode(crypt.RSASigner.from_string(pem, key_id=self.key_id), claims).decode()


@contextmanager
def serving_certs(signer: Signer) -> Iterator[str]:
    """A local URL serving the signer's certificate as Google serves its own: {key id: PEM}."""
    body = json.dumps({signer.key_id: signer.cert_pem()}).encode()

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
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    finally:
        server.shutdown()
        server.server_close()
