"""Who is calling the API functions, as a tenant — the one place the functions authenticate.

Two documented modes (LLMQ_AUTH_MODE):
- `api_key` (default): `Authorization: Bearer <key>`, checked against the hashed keys in Firestore; and,
  for the service accounts in LLMQ_TOKEN_TENANTS only (the nightly workflow), a Google ID token for
  LLMQ_TOKEN_AUDIENCE instead, verified here.
- `iam`: the deployment lets Cloud Functions' IAM check Google ID tokens at the door (invoker role);
  the function then reads the already verified token's `email` and maps it to a tenant
  (LLMQ_IAM_TENANTS, or the email itself).
"""

from __future__ import annotations

import base64
import json

import flask

from jobs.adapters.wiring import authenticator, token_verifier
from jobs.auth import KEY_PREFIX, bearer_token
from jobs.errors import Unauthenticated
from jobs.settings import api_settings


def caller_tenant(request: flask.Request) -> str:
    """The caller's tenant. Raises Unauthenticated; nothing has been read or written for the caller yet."""
    settings = api_settings()
    authorization = request.headers.get("Authorization")
    if settings.auth_mode == "iam":
        return _iam_tenant(authorization, settings.iam_tenants)
    token = bearer_token(authorization)
    if settings.token_tenants and token is not None and not token.startswith(KEY_PREFIX):
        # Not a key: a service account's ID token (the nightly workflow), verified here.
        claims = token_verifier().verify(authorization)
        return settings.token_tenants[str(claims["email"])]
    return authenticator().tenant_for(authorization)


def _iam_tenant(authorization: str | None, tenants: dict[str, str]) -> str:
    # The platform verified the token before the request reached us; only its claims are read here.
    token = bearer_token(authorization)
    try:
        payload = token.split(".")[1] if token else ""
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        email = str(claims["email"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise Unauthenticated("a Google identity token is required") from None
    return tenants.get(email, email)
