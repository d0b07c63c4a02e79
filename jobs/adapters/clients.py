"""Google Cloud clients, created on first use (never at import: a cold start pays only for what it
uses, and a deployable needs only the client libraries it calls — the functions ship without
google-cloud-storage, the runner without google-cloud-pubsub).

The clients find the local emulators through PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST and
STORAGE_EMULATOR_HOST, which the local stack sets.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.cloud import firestore, pubsub_v1, storage  # type: ignore[attr-defined]  # no py.typed


@cache
def firestore_client(project: str, database: str = "(default)") -> firestore.Client:
    from google.cloud import firestore

    return firestore.Client(project=project, database=database)


@cache
def publisher_client() -> pubsub_v1.PublisherClient:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # no py.typed

    # Publish at once: a submit waits for its own message, so batching only adds latency.
    return pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_latency=0.001))


@cache
def storage_client(project: str) -> storage.Client:
    from google.cloud import storage  # type: ignore[attr-defined]  # no py.typed

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client(project=project)
