"""Google-signed OIDC ID tokens, verified by us: the token Pub/Sub attaches to a push
(`push_config.oidc_token`, checked by the runner), and a service account's token on an API call (the
nightly workflow's, whose `auth: {type: OIDC}` cannot send an API key). A token must verify for one of
the configured audiences, come from Google, and name one of the allowed service accounts.

The certificates come from a configurable URL (Google's by default) and are cached, so tests can
sign their own tokens and a burst of pushes costs one certificate fetch.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from google.auth import exceptions as gauth_exceptions
from google.auth import jwt

from jobs.auth import bearer_token
from jobs.constants import GOOGLE_CERTS_URL
from jobs.errors import DependencyUnavailable, Unauthenticated

GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")


class IdTokenVerifier:
    def __init__(self, *, audiences: Sequence[str], service_accounts: Collection[str] | None,
                 certs_url: str = GOOGLE_CERTS_URL, issuers: tuple[str, ...] = GOOGLE_ISSUERS,
                 cache_seconds: float = 300.0) -> None:
        if not audiences or not all(audiences):
            raise ValueError("an ID token verifier needs its audiences")
        self._audiences = list(audiences)
        self._service_accounts = service_accounts  # None: any Google-signed token for the audience
        self._certs_url = certs_url
        self._issuers = issuers
        self._cache_seconds = cache_seconds
        self._certs: Mapping[str, str] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """The token's claims. Raises Unauthenticated for a missing, forged, expired or foreign token."""
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated("an OIDC token is required")
        try:
            claims: Mapping[str, Any] = jwt.decode(token, certs=self._current_certs(), audience=self._audiences)
        except (ValueError, gauth_exceptions.GoogleAuthError) as err:
            raise Unauthenticated(f"the token is not valid: {type(err).__name__}") from None
        if claims.get("iss") not in self._issuers:
            raise Unauthenticated("the token has the wrong issuer")
        if self._service_accounts is not None and (
            claims.get("email") not in self._service_accounts or not claims.get("email_verified")
        ):
            raise Unauthenticated("the token names another service account")
        return claims

    def _current_certs(self) -> Mapping[str, str]:
        with self._lock:
            if time.monotonic() - self._fetched_at > self._cache_seconds:
                try:
                    with urllib.request.urlopen(self._certs_url, timeout=10) as response:
                        self._certs = json.loads(response.read())
                except (OSError, ValueError) as err:
                    raise DependencyUnavailable("the token certificates cannot be fetched") from err
                self._fetched_at = time.monotonic()
            return self._certs
