"""ApiKeyStore over Firestore: `api_keys/{sha256 of the key}` = {tenant, name, created_at, revoked_at}."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from jobs.adapters.google_errors import CLIENT_ERRORS
from jobs.auth import ApiKey
from jobs.errors import DependencyUnavailable

API_KEYS = "api_keys"


def _key(snapshot: Any) -> ApiKey:
    doc = snapshot.to_dict()
    return ApiKey(key_hash=snapshot.id, tenant=doc["tenant"], name=doc.get("name", ""),
                  created_at=doc["created_at"], revoked_at=doc.get("revoked_at"))


class FirestoreApiKeyStore:
    def __init__(self, client: firestore.Client) -> None:
        self._keys = client.collection(API_KEYS)

    def get(self, key_hash: str) -> ApiKey | None:
        try:
            snapshot = self._keys.document(key_hash).get(timeout=10)
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the key store is unavailable") from err
        return _key(snapshot) if snapshot.exists else None

    def create(self, key: ApiKey) -> None:
        self._keys.document(key.key_hash).create(
            {"tenant": key.tenant, "name": key.name, "created_at": key.created_at, "revoked_at": None})

    def revoke(self, key_hash: str, *, at: datetime) -> ApiKey | None:
        ref = self._keys.document(key_hash)
        if not ref.get().exists:
            return None
        ref.update({"revoked_at": at})
        return _key(ref.get())

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        query = self._keys if tenant is None else self._keys.where(filter=FieldFilter("tenant", "==", tenant))
        return [_key(s) for s in query.stream()]
