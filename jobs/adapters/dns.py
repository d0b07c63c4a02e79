"""Name resolution for webhook endpoints (jobs/webhooks.py's Resolver): the system's, or none at all where only
literal addresses may be endpoints (the local stack: its tests never send a name lookup off the machine)."""

from __future__ import annotations

import socket
from collections.abc import Sequence


def system_resolver(host: str, port: int) -> Sequence[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def no_names(host: str, port: int) -> Sequence[str]:
    raise OSError(f"{host}:{port}: names are not resolved here; use a literal address")
