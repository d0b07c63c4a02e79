"""Delivering one webhook event to one endpoint (the webhooks function's push work): the endpoint read, the
event signed and sent through the `Sender` port, the attempt recorded on the job's or batch's document, and
the answer Pub/Sub needs (acknowledge, or redeliver after its backoff). HTTP-free and client-free."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Protocol

from jobs.batches import BatchStore
from jobs.errors import InvalidRequest
from jobs.ports import JobStore
from jobs.webhooks import DeliveryMessage, EndpointStore, WebhookDelivery, attempted, disabled, given_up

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None  # the receiver's HTTP status; None: no answer (refused, timed out, unreachable)
    error: str | None = None


class Sender(Protocol):
    def send(self, url: str, *, event_id: str, body: bytes, secrets: list[str], now: datetime) -> Answer:
        """Sign (Standard Webhooks, every secret) and POST `body` to `url`. Raises InvalidRequest when the URL
        may not be sent to (the SSRF rules of jobs/webhooks.py, checked at every delivery)."""
        ...


class Outcome(str, Enum):
    DELIVERED = "delivered"  # 2xx: acknowledge
    RETRY = "retry"  # anything else: Pub/Sub redelivers after its backoff, until its dead-letter topic
    DROPPED = "dropped"  # nothing to send to: the endpoint was deleted, disabled, or its address refused
    DISABLED = "disabled"  # the receiver answered 410 Gone: the endpoint is disabled, nothing more goes there


class Deliverer:
    def __init__(self, *, endpoints: EndpointStore, jobs: JobStore, batches: BatchStore, sender: Sender,
                 clock: Callable[[], datetime]) -> None:
        self._endpoints = endpoints
        self._jobs = jobs
        self._batches = batches
        self._sender = sender
        self._clock = clock

    def deliver(self, message: DeliveryMessage) -> Outcome:
        """Raises DependencyUnavailable (redelivered)."""
        endpoint = self._endpoints.get(message.endpoint_id)
        if endpoint is None or endpoint.status != "enabled":
            log.info("webhook endpoint gone or disabled; nothing sent", extra={"outcome": "dropped"})
            return Outcome.DROPPED
        now = self._clock()
        body = json.dumps(message.event, separators=(",", ":")).encode()
        try:
            answer = self._sender.send(endpoint.url, event_id=message.event["id"], body=body,
                                       secrets=endpoint.signing_secrets(now), now=now)
        except InvalidRequest as refused:
            reason = refused.message
            self._record(message, lambda current: given_up(current, event=message.event, reason=reason, now=now))
            log.warning("webhook address refused at delivery", extra={"outcome": "refused"})
            return Outcome.DROPPED
        if answer.status == 410:
            self._endpoints.update(endpoint.id, lambda e: disabled(e, reason="the receiver answered 410 Gone"))
            self._record(message, lambda current: given_up(
                current, event=message.event, reason="the receiver answered 410 Gone; the endpoint is disabled",
                now=now))
            return Outcome.DISABLED
        self._record(message, lambda current: attempted(current, event=message.event, status=answer.status,
                                                        error=answer.error, now=now))
        delivered = answer.status is not None and 200 <= answer.status < 300
        log.info("webhook attempt", extra={"outcome": answer.status or answer.error})
        return Outcome.DELIVERED if delivered else Outcome.RETRY

    def give_up(self, message: DeliveryMessage) -> None:
        """Pub/Sub ran out of attempts: the document says the delivery was given up."""
        now = self._clock()
        self._record(message, lambda current: given_up(current, event=message.event,
                                                       reason="no 2xx answer within the delivery attempts", now=now))

    def _record(self, message: DeliveryMessage,
                change: Callable[[WebhookDelivery | None], WebhookDelivery]) -> None:
        key = message.endpoint_id
        if message.subject == "jobs":
            self._jobs.update(message.subject_id, lambda r: r.model_copy(
                update={"webhooks": {**r.webhooks, key: change(r.webhooks.get(key))}}))
        else:
            self._batches.update(message.subject_id, lambda r: r.model_copy(
                update={"webhooks": {**r.webhooks, key: change(r.webhooks.get(key))}}))
