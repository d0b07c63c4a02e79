"""The webhooks' ports (jobs/webhooks.py): tenant endpoints in Firestore `webhook_endpoints/{id}`, and the
deliveries topic on Pub/Sub (one message per event and endpoint)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from jobs.adapters.firestore_writes import RETRY, TIMEOUT, conditional_update
from jobs.adapters.google_errors import unavailable_as
from jobs.constants import WEBHOOK_ENDPOINTS_COLLECTION
from jobs.errors import DependencyUnavailable
from jobs.webhooks import DeliveryMessage, WebhookEndpoint

_DOWN = "the webhook store is unavailable"


class FirestoreEndpointStore:
    def __init__(self, client: firestore.Client, *, collection: str = WEBHOOK_ENDPOINTS_COLLECTION) -> None:
        self._client = client
        self._endpoints = client.collection(collection)

    def create(self, endpoint: WebhookEndpoint) -> None:
        with unavailable_as(_DOWN):
            self._endpoints.document(endpoint.id).create(endpoint.model_dump(mode="python"), timeout=TIMEOUT,
                                                         retry=RETRY)

    def get(self, endpoint_id: str) -> WebhookEndpoint | None:
        with unavailable_as(_DOWN):
            snapshot = self._endpoints.document(endpoint_id).get(timeout=TIMEOUT, retry=RETRY)
        return WebhookEndpoint.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def delete(self, endpoint_id: str) -> None:
        with unavailable_as(_DOWN):
            self._endpoints.document(endpoint_id).delete(timeout=TIMEOUT, retry=RETRY)

    def list(self, tenant: str) -> list[WebhookEndpoint]:
        query = self._endpoints.where(filter=FieldFilter("tenant", "==", tenant))
        with unavailable_as(_DOWN):
            return [WebhookEndpoint.model_validate(s.to_dict()) for s in query.stream(timeout=TIMEOUT, retry=RETRY)]

    def update(self, endpoint_id: str,
               mutate: Callable[[WebhookEndpoint], WebhookEndpoint | None]) -> WebhookEndpoint | None:
        result = conditional_update(
            self._client, self._endpoints.document(endpoint_id), mutate,
            parse=_endpoint, dump=_dump, attempts=5, what="webhook")
        return result[0]


def _endpoint(snapshot: Any) -> WebhookEndpoint:
    return WebhookEndpoint.model_validate(snapshot.to_dict())


def _dump(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return endpoint.model_dump(mode="python")


class PubSubDeliveryQueue:
    def __init__(self, client: Any, *, project: str, topic: str, timeout: float = 10.0) -> None:
        self._client = client
        self._topic = client.topic_path(project, topic)
        self._timeout = timeout

    def enqueue(self, messages: list[DeliveryMessage]) -> None:
        futures = [self._client.publish(self._topic, m.model_dump_json().encode(), retry=Retry(timeout=self._timeout),
                                        timeout=self._timeout, endpoint_id=m.endpoint_id, subject_id=m.subject_id)
                   for m in messages]
        try:
            for future in futures:
                future.result(timeout=self._timeout + 1)
        except (gexc.GoogleAPICallError, gexc.RetryError, concurrent.futures.TimeoutError, TimeoutError) as err:
            raise DependencyUnavailable("the webhook queue is unavailable") from err
