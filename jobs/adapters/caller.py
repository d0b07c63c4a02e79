"""Who is calling the API functions, as a tenant — the one place the functions authenticate.

Two documented modes (LLMQ_AUTH_MODE):
- `api_key` (default): `Authorization: Bearer <key>`, checked against the hashed keys in Firestore; and,
  for the service accounts in LLMQ_TOKEN_TENANTS only (the nightly workflow), a Google ID token instead:
  verified by Cloud Run IAM where the API is not public, or here, for LLMQ_TOKEN_AUDIENCE, where it is
  (LLMQ_TOKEN_CHECKED_BY).
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
        email = _iam_verified_email(request)
        return settings.iam_tenants.get(email, email)
    token = bearer_token(authorization)
    if settings.token_tenants and token is not None and not token.startswith(KEY_PREFIX):
        # Not a key: a service account's ID token (the nightly workflow's), verified by Cloud Run IAM at the
        # door (an API that is not public) or here (a public one, where nobody else checks it).
        if settings.token_checked_by == "cloud_run":
            email = _iam_verified_email(request)
        else:
            email = str(token_verifier().verify(authorization)["email"])
        if email not in settings.token_tenants:
            raise Unauthenticated("only an API key may call here")
        return settings.token_tenants[email]
    return authenticator().tenant_for(authorization)


def _iam_verified_email(request: flask.Request) -> str:
    """The e-mail of the token Cloud Run IAM verified before the request reached us; only its claims are read
    (Cloud Run strips the signature). IAM checks X-Serverless-Authorization when a request has it, and then
    passes Authorization on unchecked: so that header's claims are the verified ones."""
    authorization = request.headers.get("X-Serverless-Authorization") or request.headers.get("Authorization")
    token = bearer_token(authorization)
    try:
        payload = token.split(".")[1] if token else ""
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        email = str(claims["email"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise Unauthenticated("a Google identity token is required") from None
    return email
