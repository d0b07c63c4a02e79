"""The Sender port (jobs/delivery.py) over httpx: Standard Webhooks signatures (the `standardwebhooks`
package), and a connection pinned to the address that was checked (no second resolution a DNS answer could
change), no redirects, a 10 s timeout, and no more than a few KB of the answer read."""

from __future__ import annotations

import ipaddress
from datetime import datetime

import httpx

from jobs.adapters.dns import system_resolver
from jobs.delivery import Answer
from jobs.webhooks import Resolver, check_url

MAX_ANSWER_BYTES = 4096


def signature(*, secrets: list[str], event_id: str, timestamp: datetime, body: bytes) -> str:
    """`webhook-signature`: one `v1,<base64 HMAC-SHA256>` per secret, space-separated (rotation's overlap)."""
    from standardwebhooks import Webhook

    return " ".join(Webhook(secret).sign(event_id, timestamp, body.decode()) for secret in secrets)


class HttpSender:
    def __init__(self, *, resolve: Resolver = system_resolver, allow_loopback: bool = False, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._resolve = resolve
        self._allow_loopback = allow_loopback
        self._client = httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False, transport=transport)

    def send(self, url: str, *, event_id: str, body: bytes, secrets: list[str], now: datetime) -> Answer:
        target = check_url(url, resolve=self._resolve, allow_loopback=self._allow_loopback)
        address = target.address
        literal = f"[{address}]" if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address) else address
        default_port = 443 if target.scheme == "https" else 80
        headers = {
            "Host": target.host if target.port == default_port else f"{target.host}:{target.port}",
            "Content-Type": "application/json",
            "User-Agent": "llmq-webhooks/1",
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature(secrets=secrets, event_id=event_id, timestamp=now, body=body),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            with self._client.stream("POST", f"{target.scheme}://{literal}:{target.port}{target.path}", content=body,
                                     headers=headers, extensions=extensions) as response:
                read = 0
                for chunk in response.iter_raw():  # only so much of an answer is read
                    read += len(chunk)
                    if read >= MAX_ANSWER_BYTES:
                        break
                return Answer(response.status_code)
        except httpx.HTTPError as err:
            return Answer(None, type(err).__name__)
