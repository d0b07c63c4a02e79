"""Fast tier: on-demand and version batches (POST /v1/batches with input_uri + input_generation) through the
submit and status functions over in-memory ports (tests/memory.py), and the reconcile function's handler."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from jobs import batches
from jobs.adapters import wiring
from jobs.auth import ApiKey, hash_key, new_key
from jobs.batch_state import BatchStatus
from jobs.errors import DependencyUnavailable
from jobs.settings import api_settings
from tests.memory import (
    InMemoryApiKeyStore,
    InMemoryBatchInputs,
    InMemoryBatchStore,
    InMemoryLauncher,
    api_ports,
)

REPO = Path(__file__).resolve().parents[1]
BUCKET = "llmq-batch"
INBOX_FILE = f"gs://{BUCKET}/inbox/night.jsonl"


class Batches:
    def __init__(self) -> None:
        self.store, self.inputs, self.launcher = InMemoryBatchStore(), InMemoryBatchInputs(), InMemoryLauncher()
        self.keys = InMemoryApiKeyStore()
        self.auth = {tenant: self._key(tenant) for tenant in ("nightly", "other")}
        wiring.use_ports(api_ports(batches=self.store, api_keys=self.keys, batch_inputs=self.inputs,
                                   batch_launcher=self.launcher))
        self.submit = functions_framework.create_app(
            target="submit", source=str(REPO / "functions" / "submit" / "main.py")).test_client()
        self.status = functions_framework.create_app(
            target="status", source=str(REPO / "functions" / "status" / "main.py")).test_client()

    def _key(self, tenant: str) -> dict[str, str]:
        key = new_key()
        self.keys.create(ApiKey(key_hash=hash_key(key), tenant=tenant, name="t", created_at=datetime.now(UTC)))
        return {"Authorization": f"Bearer {key}"}

    def ask(self, tenant: str = "nightly", uri: str = INBOX_FILE, generation: str | None = "1") -> Any:
        body: dict[str, Any] = {"input_uri": uri}
        if generation is not None:
            body["input_generation"] = generation
        return self.submit.post("/v1/batches", json=body, headers=self.auth[tenant])


@pytest.fixture()
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Batches]:
    monkeypatch.setenv("LLMQ_NIGHTLY_TENANTS", json.dumps(["nightly"]))
    monkeypatch.setenv("LLMQ_BATCH_BUCKET", BUCKET)
    api_settings.cache_clear()
    batches_api = Batches()
    try:
        yield batches_api
    finally:
        wiring.use_ports(None)
        monkeypatch.undo()
        api_settings.cache_clear()


def test_a_version_batch_is_created_once_and_asked_again_returns_it(api: Batches) -> None:
    api.inputs.upload(INBOX_FILE, b"{}\n")
    first = api.ask()
    assert first.status_code == 202, first.text
    batch = first.get_json()
    assert batch["id"] == batches.nightly_batch_id(BUCKET, "inbox/night.jsonl", "1")
    # The runner reads that version only, never a later upload under the same name.
    assert api.launcher.launched == [{"batch_id": batch["id"], "input_uri": f"{INBOX_FILE}#1",
                                      "output_prefix": f"gs://{BUCKET}/outbox/{batch['id']}/"}]
    again = api.ask()
    assert again.status_code == 200 and again.get_json()["id"] == batch["id"] and len(api.launcher.launched) == 1
    read = api.status.get(f"/v1/batches/{batch['id']}", headers=api.auth["nightly"])
    assert read.status_code == 200 and read.get_json()["status"] == "validating"


def test_a_failed_version_batch_is_resumed_and_launched_again(api: Batches) -> None:
    api.inputs.upload(INBOX_FILE, b"{}\n")
    batch_id = api.ask().get_json()["id"]
    now = datetime.now(UTC)
    api.store.update(batch_id, lambda r: batches.abandon(r, now=now + timedelta(hours=2), stale_for=timedelta(hours=1)))
    assert api.store.records[batch_id].status is BatchStatus.FAILED
    resumed = api.ask()
    assert resumed.status_code == 202 and resumed.get_json()["status"] == "validating"
    assert len(api.launcher.launched) == 2
    # A relaunch that fails puts it back to failed (launch_failed), for the next night to try again.
    api.store.update(batch_id, lambda r: batches.abandon(r, now=now + timedelta(hours=4), stale_for=timedelta(hours=1)))
    api.launcher.failing = DependencyUnavailable("Cloud Run is unreachable")
    refused = api.ask()
    assert refused.status_code == 503
    record = api.store.records[batch_id]
    assert record.status is BatchStatus.FAILED and record.error is not None
    assert record.error.code == batches.LAUNCH_FAILED


def test_inbox_objects_are_the_nightly_tenants_only(api: Batches) -> None:
    api.inputs.upload(INBOX_FILE, b"{}\n")
    squatted = api.ask(tenant="other")  # anyone else would own the nightly run's batch and block it
    assert squatted.status_code == 400 and api.store.records == {}
    without_version = api.ask(generation=None)
    assert without_version.status_code == 400 and api.launcher.launched == []
    gone = api.ask(generation="7")  # not the live version
    assert gone.status_code == 400 and gone.get_json()["error"]["code"] == "input_not_found"


def test_another_tenants_version_batch_is_a_conflict(api: Batches) -> None:
    other_file = f"gs://{BUCKET}/uploads/a.jsonl"
    api.inputs.upload(other_file, b"{}\n")
    assert api.ask(tenant="other", uri=other_file).status_code == 202
    clash = api.ask(tenant="nightly", uri=other_file)
    assert clash.status_code == 409 and clash.get_json()["error"]["code"] == "batch_exists"


def test_the_reconcile_handler_ends_abandoned_batches_and_reports(api: Batches) -> None:
    api.inputs.upload(INBOX_FILE, b"{}\n")
    batch_id = api.ask().get_json()["id"]
    record = api.store.records[batch_id]
    assert record.updated_at is not None
    api.store.records[batch_id] = record.model_copy(update={"updated_at": record.updated_at - timedelta(hours=2)})
    reconcile = functions_framework.create_app(
        target="reconcile", source=str(REPO / "functions" / "reconcile" / "main.py")).test_client()
    assert reconcile.get("/").status_code == 405
    report = reconcile.post("/", json={"batch_stale_for_seconds": 3600})
    assert report.status_code == 200 and report.get_json()["batches_failed"] == 1
    assert api.store.records[batch_id].status is BatchStatus.FAILED
