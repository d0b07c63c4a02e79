"""Authentication of Pub/Sub pushes: the OIDC token Pub/Sub attaches (`push_config.oidc_token`)
must verify for the configured audience, come from Google, and name the push service account.

The certificates come from a configurable URL (Google's by default) and are cached, so tests can
sign their own tokens and a burst of pushes costs one certificate fetch.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from google.auth import exceptions as gauth_exceptions
from google.auth import jwt

from jobs.auth import bearer_token
from jobs.errors import DependencyUnavailable, Unauthenticated

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")


class PushVerifier:
    def __init__(self, *, audience: str, service_account: str | None, certs_url: str = GOOGLE_CERTS_URL,
                 issuers: tuple[str, ...] = GOOGLE_ISSUERS, cache_seconds: float = 300.0) -> None:
        self._audience = audience
        self._service_account = service_account
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
            raise Unauthenticated("a push must carry an OIDC token")
        try:
            claims: Mapping[str, Any] = jwt.decode(token, certs=self._current_certs(), audience=self._audience)
        except (ValueError, gauth_exceptions.GoogleAuthError) as err:
            raise Unauthenticated(f"the push token is not valid: {type(err).__name__}") from None
        if claims.get("iss") not in self._issuers:
            raise Unauthenticated("the push token has the wrong issuer")
        if self._service_account is not None and (
            claims.get("email") != self._service_account or not claims.get("email_verified")
        ):
            raise Unauthenticated("the push token names another service account")
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
