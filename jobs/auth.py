"""API keys: who is calling, as a tenant. Keys are stored only as SHA-256 hashes (Firestore
`api_keys/{hash}`); the raw key is shown once, at creation.

A key is `llmq_<43 url-safe characters>` (256 random bits). Looking a key up by its hash leaks
nothing useful through timing: an attacker learns, at most, about hashes of keys they do not have.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from jobs.errors import Unauthenticated

KEY_PREFIX = "llmq_"
_CACHE_SECONDS = 30.0  # a revoked key stops working within this long on every instance


@dataclass(frozen=True)
class ApiKey:
    key_hash: str
    tenant: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class ApiKeyStore(Protocol):
    def get(self, key_hash: str) -> ApiKey | None: ...

    def create(self, key: ApiKey) -> None: ...

    def revoke(self, key_hash: str, *, at: datetime) -> ApiKey | None: ...

    def list(self, tenant: str | None = None) -> list[ApiKey]: ...


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class ApiKeyAuthenticator:
    """Maps `Authorization: Bearer <key>` to a tenant, with a short per-instance cache so a burst
    of requests costs one Firestore read per key, not one per request."""

    def __init__(self, store: ApiKeyStore, *, clock: Callable[[], float] = time.monotonic,
                 cache_seconds: float = _CACHE_SECONDS) -> None:
        self._store = store
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    def tenant_for(self, authorization: str | None) -> str:
        """The caller's tenant. Raises Unauthenticated (no, malformed, unknown or revoked key)."""
        raw = bearer_token(authorization)
        if raw is None:
            raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
        if not raw.startswith(KEY_PREFIX) or len(raw) > 128:
            raise Unauthenticated("the API key is not valid")
        key_hash = hash_key(raw)
        key = self._lookup(key_hash)
        if key is None or not key.active or not hmac.compare_digest(key.key_hash, key_hash):
            raise Unauthenticated("the API key is not valid")
        return key.tenant

    def _lookup(self, key_hash: str) -> ApiKey | None:
        now = self._clock()
        cached = self._cache.get(key_hash)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        key = self._store.get(key_hash)
        if len(self._cache) > 10_000:  # bounded: random invalid keys must not grow it forever
            self._cache.clear()
        self._cache[key_hash] = (now, key)
        return key
