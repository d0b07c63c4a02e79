"""Job ids. With an idempotency key the id is derived from (tenant, key), so a Firestore
`create()` is the idempotency check; without one it is random."""

from __future__ import annotations

import hashlib
import re
import uuid

_JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")


def new_job_id(*, tenant: str, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return f"job_{uuid.uuid4().hex}"
    digest = hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()
    return f"job_{digest[:32]}"


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value))
