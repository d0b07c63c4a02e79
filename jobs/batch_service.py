"""On-demand batches (POST /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel): HTTP-free
and client-free use cases over the BatchStore, BatchInputs and BatchLauncher ports."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs import batches
from jobs.batches import BatchInputs, BatchLauncher, BatchRecord, BatchStore
from jobs.errors import DependencyUnavailable, InvalidRequest, NotFound
from jobs.models import MAX_METADATA_PAIRS, MetadataKey, MetadataValue
from jobs.service import utcnow

log = logging.getLogger(__name__)

ONDEMAND_PREFIX = "inbox-ondemand/"  # where inline JSONL is stored, one object per batch
# Inputs must not come from where the platform writes or the nightly run reads (it would run them twice).
_RESERVED_PREFIXES = ("inbox/", "outbox/", "processed/", "failed/")


class CreateBatchRequest(BaseModel):
    """The body of POST /v1/batches: the input as a gs:// object of the batch bucket, or inline."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    input_uri: str | None = Field(default=None, min_length=6, max_length=2048)
    input_jsonl: str | None = Field(default=None, min_length=1)
    completion_window: Literal["24h"] = "24h"  # OpenAI's field; accepted for compatibility
    metadata: dict[MetadataKey, MetadataValue] | None = None

    @model_validator(mode="after")
    def _check(self) -> CreateBatchRequest:
        if (self.input_uri is None) == (self.input_jsonl is None):
            raise ValueError("exactly one of 'input_uri' and 'input_jsonl' is required")
        if self.metadata is not None and len(self.metadata) > MAX_METADATA_PAIRS:
            raise ValueError(f"'metadata' takes at most {MAX_METADATA_PAIRS} pairs")
        return self


class BatchService:
    def __init__(self, *, store: BatchStore, inputs: BatchInputs, launcher: BatchLauncher, bucket: str,
                 ttl_seconds: int = batches.DEFAULT_BATCH_TTL_SECONDS,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._inputs = inputs
        self._launcher = launcher
        self._bucket = bucket
        self._ttl = ttl_seconds
        self._clock = clock

    def create(self, request: CreateBatchRequest, *, tenant: str) -> BatchRecord:
        """Store the input (when inline), create `batches/{id}` (validating) and start the runner.
        Raises InvalidRequest, DependencyUnavailable (nothing is left behind)."""
        batch_id = batches.new_batch_id()
        inline = request.input_uri is None
        if request.input_uri is not None:
            input_uri = self._check_input_uri(request.input_uri)
        else:
            input_uri = f"gs://{self._bucket}/{ONDEMAND_PREFIX}{batch_id}.jsonl"
            assert request.input_jsonl is not None
            self._inputs.upload(input_uri, request.input_jsonl.encode())
        output_prefix = f"gs://{self._bucket}/outbox/{batch_id}/"
        record = BatchRecord.new(batch_id=batch_id, input_uri=input_uri, output_prefix=output_prefix, now=self._clock(),
                                 tenant=tenant, source="api", metadata=dict(request.metadata or {}),
                                 ttl_seconds=self._ttl)
        try:
            if not self._store.create(record):  # a random id: never seen in practice
                raise DependencyUnavailable("batch id collision; retry")
            handle = self._launcher.launch(batch_id=batch_id, input_uri=input_uri, output_prefix=output_prefix)
        except DependencyUnavailable:
            self._undo(batch_id, input_uri if inline else None)
            raise
        try:
            updated, _ = self._store.update(batch_id, lambda r: r.model_copy(update={"execution": handle}))
        except DependencyUnavailable:
            updated = None  # the batch runs regardless; the handle is only for operators
        return updated or record

    def get(self, batch_id: str, *, tenant: str) -> BatchRecord:
        """Raises NotFound for a malformed, unknown or other tenant's id."""
        record = self._store.get(batch_id) if batches.is_batch_id(batch_id) else None
        if record is None or record.tenant != tenant:
            raise NotFound(f"batch {batch_id} not found")
        return record

    def cancel(self, batch_id: str, *, tenant: str) -> BatchRecord:
        """Ask the batch to stop: it goes `cancelling`, and the runner ends it `cancelled` once the requests
        already running have finished. A final batch is returned unchanged."""
        self.get(batch_id, tenant=tenant)
        now = self._clock()
        record, _ = self._store.update(batch_id, lambda current: batches.cancel(current, now=now))
        if record is None:
            raise NotFound(f"batch {batch_id} not found")
        return record

    def _check_input_uri(self, uri: str) -> str:
        prefix = f"gs://{self._bucket}/"
        name = uri[len(prefix):] if uri.startswith(prefix) else ""
        if not name or name.endswith("/") or name.startswith(_RESERVED_PREFIXES):
            raise InvalidRequest(
                f"input_uri must be an object in the batch bucket ({prefix}...), outside "
                f"{', '.join(_RESERVED_PREFIXES)}",
                details=[{"field": "input_uri", "code": "invalid_uri", "message": f"an object under {prefix}"}])
        if not self._inputs.exists(uri):
            raise InvalidRequest(f"{uri} does not exist", code="input_not_found",
                                 details=[{"field": "input_uri", "code": "not_found", "message": "no such object"}])
        return uri

    def _undo(self, batch_id: str, inline_uri: str | None) -> None:
        try:
            self._store.delete(batch_id)
            if inline_uri is not None:
                self._inputs.delete(inline_uri)
        except DependencyUnavailable:
            log.error("could not undo batch %s after a failed launch", batch_id)
