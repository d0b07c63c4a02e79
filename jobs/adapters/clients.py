"""Google Cloud clients, created on first use (never at import: a cold start pays only for what it uses).

The clients find the local emulators through PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST and
STORAGE_EMULATOR_HOST, which the local stack sets.
"""

from __future__ import annotations

import os
from functools import cache

from google.cloud import firestore, pubsub_v1, storage


@cache
def firestore_client(project: str, database: str = "(default)") -> firestore.Client:
    return firestore.Client(project=project, database=database)


@cache
def publisher_client() -> pubsub_v1.PublisherClient:
    # Publish at once: a submit waits for its own message, so batching only adds latency.
    return pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_latency=0.001))


@cache
def storage_client(project: str) -> storage.Client:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client(project=project)
