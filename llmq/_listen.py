"""Firestore listeners on job documents, for clients that can read the project's database (a local
stack's emulator, or a project with Application Default Credentials). google-cloud-firestore is imported
only here, and only when a listener is asked for: the HTTP client does not need it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from llmq.config import FirestoreAccess
from llmq.errors import ConfigurationError

_clients: dict[FirestoreAccess, Any] = {}
_lock = threading.Lock()


def firestore_client(access: FirestoreAccess) -> Any:
    """One client per database for the process (each opens its own channel)."""
    with _lock:
        if access not in _clients:
            try:
                from google.cloud import firestore
            except ImportError as err:  # pragma: no cover - depends on the installation
                raise ConfigurationError("listening needs google-cloud-firestore (pip install 'llmq[gcp]')") from err
            # The Google clients read the emulator's address from the environment only.
            if access.emulator_host:
                os.environ["FIRESTORE_EMULATOR_HOST"] = access.emulator_host
            _clients[access] = firestore.Client(project=access.project, database=access.database)
        return _clients[access]


class JobListener:
    """Calls `on_state(status, output)` from the listener's thread for every snapshot of jobs/{id}."""

    def __init__(self, access: FirestoreAccess, job_id: str, on_state: Callable[[str, str | None], object]) -> None:
        self._on_state = on_state
        ref = firestore_client(access).collection("jobs").document(job_id)
        self._watch = ref.on_snapshot(self._callback)

    def _callback(self, snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
        for snapshot in snapshots:
            if snapshot.exists:
                doc = snapshot.to_dict()
                # Only the state and the text leave the listener: the document's internal fields do not.
                self._on_state(str(doc.get("status")), doc.get("output"))

    def close(self) -> None:
        self._watch.unsubscribe()
