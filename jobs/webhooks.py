"""Signed webhooks (CONTRACT §9): tenant endpoints, the events a job's or batch's end announces, where they may
be sent (SSRF rules), and the state of each delivery. Pure: no Google client, no HTTP client.

How an end becomes a delivery, and why none is lost:
- The write that ends a job or batch also sets its `pending_event` (jobs/lifecycle.py, jobs/batches.py): the
  outbox, in the same write, so no process can die between ending a job and remembering to announce it.
- Whoever wrote it announces it at once (`Announcer`): one delivery message per subscribed endpoint on the
  deliveries topic, then `pending_event` is cleared. A writer that dies before announcing leaves it set; the
  runner announces again on the job message's redelivery, and the reconciler sweeps what is left.
- The webhooks function (functions/webhooks) is the deliveries topic's push endpoint: it signs (Standard
  Webhooks), sends, records the attempt on the document (`webhooks.<endpoint id>`), and answers Pub/Sub so
  that its retry policy backs off; past the last attempt the dead-letter topic's push marks it `given_up`.
- An event's id (`webhook-id`) is derived from the subject and its final status: every retry, and every
  re-announcement, carries the same id. Receivers deduplicate by it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.errors import InvalidRequest, NotFound

JOB_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
BATCH_EVENTS = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
EVENT_TYPES = (*JOB_EVENTS, *BATCH_EVENTS)
SECRET_PREFIX = "whsec_"
MAX_ENDPOINTS_PER_TENANT = 16
MAX_URL_LENGTH = 2048
DEFAULT_SECRET_OVERLAP_SECONDS = 86400  # a rotated-out secret still signs for a day
Subject = Literal["jobs", "batches"]


def pending_event(subject: Subject, status: str) -> str:
    """The event a subject's final status announces (`job.succeeded`, `batch.expired`, ...)."""
    return f"{'job' if subject == 'jobs' else 'batch'}.{status}"


def event_id(subject_id: str, event_type: str) -> str:
    """Stable for one end of one subject: retries and re-announcements carry the same `webhook-id`."""
    return "evt_" + hashlib.sha256(f"{subject_id}\x00{event_type}".encode()).hexdigest()[:32]


def event_body(*, subject_id: str, event_type: str, status: str, metadata: dict[str, str],
               created_at: datetime) -> dict[str, Any]:
    """OpenAI's thin event: the subject's id (and status, metadata); the receiver reads the rest by id."""
    return {"id": event_id(subject_id, event_type), "object": "event", "type": event_type,
            "created_at": int(created_at.timestamp()), "data": {"id": subject_id, "status": status,
                                                                 "metadata": metadata}}


# --- endpoints -----------------------------------------------------------------------------------


class Secret(BaseModel):
    value: str
    created_at: datetime
    expires_at: datetime | None = None  # set when rotated out: it signs until then


class WebhookEndpoint(BaseModel):
    """The Firestore document `webhook_endpoints/{id}`. The secrets are kept to sign with (an HMAC key cannot
    be hashed away); they are shown to the tenant once, when made."""

    model_config = ConfigDict(extra="ignore")

    id: str
    tenant: str
    url: str
    events: list[str]
    description: str = ""
    status: Literal["enabled", "disabled"] = "enabled"
    disabled_reason: str | None = None
    secrets: list[Secret]
    created_at: datetime

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret, then any rotated-out one still in its overlap."""
        return [s.value for s in self.secrets if s.expires_at is None or s.expires_at > now]

    def view(self, *, secret: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": "webhook_endpoint", "url": self.url, "events": self.events,
                                "description": self.description, "status": self.status,
                                "disabled_reason": self.disabled_reason, "created_at": int(self.created_at.timestamp())}
        if secret is not None:
            body["secret"] = secret
        return body


class CreateEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: str = Field(min_length=8, max_length=MAX_URL_LENGTH)
    events: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES))
    description: str = Field(default="", max_length=512)

    @field_validator("events")
    @classmethod
    def _known(cls, events: list[str]) -> list[str]:
        unknown = [e for e in events if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; one of {list(EVENT_TYPES)}")
        return sorted(set(events))


class RotateSecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # How long the old secret still signs (0: not at all); receivers switch to the new one meanwhile.
    expire_old_after_seconds: int = Field(default=DEFAULT_SECRET_OVERLAP_SECONDS, ge=0, le=7 * 86400)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_endpoint_id() -> str:
    return f"we_{uuid.uuid4().hex}"


_ENDPOINT_ID = re.compile(r"^we_[0-9a-f]{32}$")


def rotated(endpoint: WebhookEndpoint, *, secret: str, now: datetime, overlap: timedelta) -> WebhookEndpoint:
    """The endpoint with `secret` current; the old current one signs until now + overlap; expired ones go."""
    kept = [s if s.expires_at is not None else s.model_copy(update={"expires_at": now + overlap})
            for s in endpoint.secrets if s.expires_at is None or s.expires_at > now]
    kept = [s for s in kept if s.expires_at is not None and s.expires_at > now]
    return endpoint.model_copy(update={"secrets": [Secret(value=secret, created_at=now), *kept]})


def disabled(endpoint: WebhookEndpoint, *, reason: str) -> WebhookEndpoint | None:
    if endpoint.status == "disabled":
        return None
    return endpoint.model_copy(update={"status": "disabled", "disabled_reason": reason})


# --- where a webhook may go ------------------------------------------------------------------------

Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> the addresses it resolves to


class Target(BaseModel):
    """A URL checked for delivery: connect to `address` (the one checked), say `host` (Host, TLS SNI)."""

    model_config = ConfigDict(frozen=True)

    scheme: Literal["http", "https"]
    host: str
    port: int
    path: str  # with the query
    address: str


def refused_address(address: str, *, allow_loopback: bool) -> str | None:
    """Why a webhook may not go to `address` (None: it may): only global unicast addresses, and loopback where
    the local stack allows it."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 inside IPv6 (mapped, 6to4, Teredo, NAT64) reaches that IPv4 address: judge it instead.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None) or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return refused_address(str(embedded), allow_loopback=allow_loopback)
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    for test, what in ((ip.is_link_local, "a link-local address (the metadata server's among them)"),
                       (ip.is_multicast, "a multicast address"), (ip.is_unspecified, "an unspecified address"),
                       (ip in _CGNAT, "a carrier-grade NAT address"), (ip.is_private, "a private address"),
                       (ip.is_reserved, "a reserved address"), (not ip.is_global, "not a public address")):
        if test:
            return what
    return None


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def check_url(url: str, *, resolve: Resolver, allow_loopback: bool) -> Target:
    """The target of a webhook URL, every address its host resolves to checked. `https` only; `http` just for
    loopback where allowed (the local stack). Raises InvalidRequest naming `url`."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _bad_url("the port is not a number") from None
    host = parts.hostname
    if parts.scheme not in ("https", "http") or not host:
        raise _bad_url("an https:// URL is required")
    if parts.username or parts.password:
        raise _bad_url("credentials in the URL are not allowed")
    try:
        addresses = [host] if _is_literal(host) else list(resolve(host, port))
    except OSError:
        raise _bad_url(f"{host} does not resolve") from None
    if not addresses:
        raise _bad_url(f"{host} does not resolve")
    for address in addresses:
        if (why := refused_address(address, allow_loopback=allow_loopback)) is not None:
            raise _bad_url(f"{host} resolves to {why}; webhooks go to public addresses only")
    loopback = all(ipaddress.ip_address(a).is_loopback for a in addresses)
    if parts.scheme == "http" and not (allow_loopback and loopback):
        raise _bad_url("an https:// URL is required")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme=parts.scheme, host=host, port=port, path=path, address=addresses[0])  # type: ignore[arg-type]


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bad_url(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_webhook_url",
                          details=[{"field": "url", "code": "refused", "message": message}])


# --- deliveries ---------------------------------------------------------------------------------


class WebhookDelivery(BaseModel):
    """A delivery's state on the job's or batch's document, `webhooks.<endpoint id>`."""

    event_id: str
    type: str
    state: Literal["delivering", "delivered", "given_up"] = "delivering"
    attempts: int = 0
    last_status: int | None = None  # the receiver's HTTP status; None: no answer
    last_error: str | None = None
    updated_at: datetime | None = None


class DeliveryMessage(BaseModel):
    """One event for one endpoint: the deliveries topic's message."""

    model_config = ConfigDict(extra="ignore")

    endpoint_id: str
    subject: Subject
    subject_id: str
    event: dict[str, Any]


def attempted(current: WebhookDelivery | None, *, event: dict[str, Any], status: int | None, error: str | None,
              now: datetime) -> WebhookDelivery:
    state: Literal["delivering", "delivered"] = "delivered" if status is not None and 200 <= status < 300 \
        else "delivering"
    if current is not None and current.state != "delivering" and current.event_id == event["id"]:
        return current  # a duplicate delivery after the end: the first end stands
    attempts = (current.attempts if current is not None and current.event_id == event["id"] else 0) + 1
    return WebhookDelivery(event_id=event["id"], type=event["type"], state=state, attempts=attempts,
                           last_status=status, last_error=error, updated_at=now)


def given_up(current: WebhookDelivery | None, *, event: dict[str, Any], reason: str, now: datetime) -> WebhookDelivery:
    if current is not None and current.state == "delivered" and current.event_id == event["id"]:
        return current
    attempts = current.attempts if current is not None and current.event_id == event["id"] else 0
    return WebhookDelivery(event_id=event["id"], type=event["type"], state="given_up", attempts=attempts,
                           last_status=current.last_status if current is not None else None,
                           last_error=reason, updated_at=now)


# --- ports ---------------------------------------------------------------------------------------


class EndpointStore(Protocol):
    """`webhook_endpoints/{id}`; every method may raise DependencyUnavailable."""

    def create(self, endpoint: WebhookEndpoint) -> None: ...

    def get(self, endpoint_id: str) -> WebhookEndpoint | None: ...

    def delete(self, endpoint_id: str) -> None: ...

    def list(self, tenant: str) -> list[WebhookEndpoint]: ...

    def update(self, endpoint_id: str,
               mutate: Callable[[WebhookEndpoint], WebhookEndpoint | None]) -> WebhookEndpoint | None: ...


class DeliveryQueue(Protocol):
    def enqueue(self, messages: list[DeliveryMessage]) -> None:
        """Publish them all (waiting for the server's acks). Raises DependencyUnavailable."""
        ...


# --- the API's use cases -----------------------------------------------------------------------


class EndpointService:
    def __init__(self, *, store: EndpointStore, resolve: Resolver, allow_loopback: bool,
                 clock: Callable[[], datetime]) -> None:
        self._store = store
        self._resolve = resolve
        self._allow_loopback = allow_loopback
        self._clock = clock

    def create(self, request: CreateEndpointRequest, *, tenant: str) -> dict[str, Any]:
        """The endpoint with its secret (shown only here). Raises InvalidRequest (a refused URL, too many)."""
        check_url(request.url, resolve=self._resolve, allow_loopback=self._allow_loopback)
        if len(self._store.list(tenant)) >= MAX_ENDPOINTS_PER_TENANT:
            raise InvalidRequest(f"a tenant may have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints",
                                 code="too_many_endpoints")
        now, secret = self._clock(), new_secret()
        endpoint = WebhookEndpoint(id=new_endpoint_id(), tenant=tenant, url=request.url, events=request.events,
                                   description=request.description, secrets=[Secret(value=secret, created_at=now)],
                                   created_at=now)
        self._store.create(endpoint)
        return endpoint.view(secret=secret)

    def get(self, endpoint_id: str, *, tenant: str) -> WebhookEndpoint:
        endpoint = self._store.get(endpoint_id) if _ENDPOINT_ID.match(endpoint_id) else None
        if endpoint is None or endpoint.tenant != tenant:
            raise NotFound(f"webhook endpoint {endpoint_id[:80]} not found")
        return endpoint

    def list(self, *, tenant: str) -> dict[str, Any]:
        endpoints = sorted(self._store.list(tenant), key=lambda e: e.created_at, reverse=True)
        return {"object": "list", "data": [e.view() for e in endpoints]}

    def delete(self, endpoint_id: str, *, tenant: str) -> dict[str, Any]:
        self.get(endpoint_id, tenant=tenant)
        self._store.delete(endpoint_id)
        return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}

    def rotate(self, endpoint_id: str, request: RotateSecretRequest, *, tenant: str) -> dict[str, Any]:
        """A new current secret (shown only here); the old one signs beside it for the overlap."""
        self.get(endpoint_id, tenant=tenant)
        now, secret = self._clock(), new_secret()
        overlap = timedelta(seconds=request.expire_old_after_seconds)
        endpoint = self._store.update(endpoint_id, lambda e: rotated(e, secret=secret, now=now, overlap=overlap))
        if endpoint is None:
            raise NotFound(f"webhook endpoint {endpoint_id[:80]} not found")
        return endpoint.view(secret=secret)


# --- announcing -----------------------------------------------------------------------------------


class Announcer:
    """Turns a subject's pending event into one delivery message per subscribed, enabled endpoint of its
    tenant (nothing when it has none). The caller clears `pending_event` after: an announcement that fails
    leaves it for a redelivery or the reconciler."""

    def __init__(self, *, endpoints: EndpointStore, queue: DeliveryQueue, clock: Callable[[], datetime]) -> None:
        self._endpoints = endpoints
        self._queue = queue
        self._clock = clock

    def announce(self, *, subject: Subject, subject_id: str, tenant: str, event_type: str, status: str,
                 metadata: dict[str, str], ended_at: datetime | None) -> int:
        """Returns the number of deliveries queued. Raises DependencyUnavailable."""
        wanted = [e for e in self._endpoints.list(tenant) if e.status == "enabled" and event_type in e.events]
        if not wanted:
            return 0
        event = event_body(subject_id=subject_id, event_type=event_type, status=status, metadata=metadata,
                           created_at=ended_at or self._clock())
        self._queue.enqueue([DeliveryMessage(endpoint_id=e.id, subject=subject, subject_id=subject_id, event=event)
                             for e in wanted])
        return len(wanted)
