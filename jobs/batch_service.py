"""Batches over the API (POST /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel): HTTP-free
and client-free use cases over the BatchStore, BatchInputs and BatchLauncher ports. The nightly workflow
uses them too: `input_uri` + `input_generation` names one version of a bucket object, whose batch id is
derived from it (`batches.nightly_batch_id`), so asking again returns that batch, or resumes it if it failed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs import batches
from jobs.batches import BatchInputs, BatchLauncher, BatchRecord, BatchStore
from jobs.constants import NIGHTLY_PREFIX, ONDEMAND_PREFIX
from jobs.errors import DependencyUnavailable, IdempotencyConflict, InvalidRequest, NotFound
from jobs.models import MAX_METADATA_PAIRS, MetadataKey, MetadataValue
from jobs.object_names import object_name_problem
from jobs.service import utcnow

log = logging.getLogger(__name__)

# Inputs must not come from where the platform writes. The nightly run's inbox only with a generation:
# that names the same batch the nightly run uses, so nothing runs twice.
_RESERVED_PREFIXES = ("outbox/", "processed/", "failed/")


class CreateBatchRequest(BaseModel):
    """The body of POST /v1/batches: the input as a gs:// object of the batch bucket, or inline."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    input_uri: str | None = Field(default=None, min_length=6, max_length=2048)
    input_jsonl: str | None = Field(default=None, min_length=1)
    # With input_uri: that version of the object (its GCS generation); the batch id is derived from it.
    input_generation: str | None = Field(default=None, pattern=r"^[0-9]{1,20}$")
    completion_window: Literal["24h"] = "24h"  # OpenAI's field; accepted for compatibility
    metadata: dict[MetadataKey, MetadataValue] | None = None

    @model_validator(mode="after")
    def _check(self) -> CreateBatchRequest:
        if (self.input_uri is None) == (self.input_jsonl is None):
            raise ValueError("exactly one of 'input_uri' and 'input_jsonl' is required")
        if self.input_generation is not None and self.input_uri is None:
            raise ValueError("'input_generation' needs 'input_uri'")
        if self.metadata is not None and len(self.metadata) > MAX_METADATA_PAIRS:
            raise ValueError(f"'metadata' takes at most {MAX_METADATA_PAIRS} pairs")
        return self


class BatchService:
    def __init__(self, *, store: BatchStore, inputs: BatchInputs, launcher: BatchLauncher, bucket: str,
                 ttl_seconds: int = batches.DEFAULT_BATCH_TTL_SECONDS, nightly_tenants: Collection[str] = (),
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        # Who may name inbox/ objects: the nightly run's own tenant. Anyone else could otherwise create an
        # inbox file's batch first, own it, and the nightly run would be refused it every night.
        self._nightly_tenants = frozenset(nightly_tenants)
        self._inputs = inputs
        self._launcher = launcher
        self._bucket = bucket
        self._ttl = ttl_seconds
        self._clock = clock

    def create(self, request: CreateBatchRequest, *, tenant: str) -> tuple[BatchRecord, bool]:
        """Store the input (when inline), create `batches/{id}` (validating) and start the runner. Returns
        (batch, started). With `input_generation` the id is that object version's: if its batch exists it
        is returned as it is (started False), or resumed and started again if it failed.
        Raises InvalidRequest, IdempotencyConflict (another tenant's batch), DependencyUnavailable (nothing
        is left behind)."""
        if request.input_generation is not None:
            assert request.input_uri is not None
            return self._create_for_version(request.input_uri, request.input_generation, request, tenant=tenant)
        batch_id = batches.new_batch_id()
        inline = request.input_uri is None
        if request.input_uri is not None:
            input_uri = self._check_input_uri(request.input_uri, generation=None, tenant=tenant)
        else:
            input_uri = f"gs://{self._bucket}/{ONDEMAND_PREFIX}{batch_id}.jsonl"
            assert request.input_jsonl is not None
            self._inputs.upload(input_uri, request.input_jsonl.encode())
        record = self._new_record(batch_id, input_uri, request, tenant=tenant, source="api")
        try:
            if not self._store.create(record):  # a random id: never seen in practice
                raise DependencyUnavailable("batch id collision; retry")
        except DependencyUnavailable:
            self._undo(batch_id, input_uri if inline else None)
            raise
        return self._launch(record, undo=lambda: self._undo(batch_id, input_uri if inline else None)), True

    def _create_for_version(self, uri: str, generation: str, request: CreateBatchRequest, *,
                            tenant: str) -> tuple[BatchRecord, bool]:
        input_uri = self._check_input_uri(uri, generation=generation, tenant=tenant)
        name = input_uri[len(f"gs://{self._bucket}/"):]
        batch_id = batches.nightly_batch_id(self._bucket, name, generation)
        source = "nightly" if name.startswith(NIGHTLY_PREFIX) else "api"
        # The batch reads this version only (gsutil's `#generation`), not a later upload under the same name.
        record = self._new_record(batch_id, f"{input_uri}#{generation}", request, tenant=tenant, source=source)
        if self._store.create(record):
            return self._launch(record, undo=lambda: self._undo(batch_id, None)), True
        existing = self._store.get(batch_id)
        if existing is None:  # deleted between the two calls (an undo): the caller's retry creates it
            raise DependencyUnavailable("the batch is being removed; retry")
        if existing.tenant != tenant:
            raise IdempotencyConflict("this object version is another caller's batch", code="batch_exists")
        now = self._clock()
        resumed, changed = self._store.update(batch_id, lambda current: batches.resume_failed(current, now=now))
        if not changed or resumed is None:
            return existing if resumed is None else resumed, False
        message = "the batch runner could not be started again"
        return self._launch(resumed, undo=lambda: self._store.update(
            batch_id, lambda current: batches.launch_failed(current, now=self._clock(), message=message))), True

    def _new_record(self, batch_id: str, input_uri: str, request: CreateBatchRequest, *, tenant: str,
                    source: str) -> BatchRecord:
        return BatchRecord.new(batch_id=batch_id, input_uri=input_uri, output_prefix=self._output_prefix(batch_id),
                               now=self._clock(), tenant=tenant, source=source,
                               metadata=dict(request.metadata or {}), ttl_seconds=self._ttl)

    def _output_prefix(self, batch_id: str) -> str:
        return f"gs://{self._bucket}/outbox/{batch_id}/"

    def _launch(self, record: BatchRecord, *, undo: Callable[[], object]) -> BatchRecord:
        """Start the runner for `record`; on failure `undo` and raise DependencyUnavailable."""
        try:
            handle = self._launcher.launch(batch_id=record.id, input_uri=record.input_uri,
                                           output_prefix=self._output_prefix(record.id))
        except DependencyUnavailable:
            try:
                undo()
            except DependencyUnavailable:
                log.error("could not undo batch %s after a failed launch", record.id)
            raise
        try:
            updated, _ = self._store.update(record.id, lambda r: batches.with_execution(r, handle))
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

    def _check_input_uri(self, uri: str, *, generation: str | None, tenant: str) -> str:
        prefix = f"gs://{self._bucket}/"
        name = uri[len(prefix):] if uri.startswith(prefix) else ""
        nightly = generation is not None and tenant in self._nightly_tenants
        reserved = _RESERVED_PREFIXES if nightly else (*_RESERVED_PREFIXES, NIGHTLY_PREFIX)
        if not name or name.endswith("/") or name.startswith(reserved):
            raise InvalidRequest(
                f"input_uri must be an object in the batch bucket ({prefix}...), outside {', '.join(reserved)}"
                + ("" if nightly else f" ({NIGHTLY_PREFIX} is the nightly run's, with input_generation)"),
                details=[{"field": "input_uri", "code": "invalid_uri", "message": f"an object under {prefix}"}])
        if (problem := object_name_problem(name)) is not None:
            raise InvalidRequest(f"input_uri names no possible object: {problem}",
                                 details=[{"field": "input_uri", "code": "invalid_object_name", "message": problem}])
        if not self._inputs.exists(uri, generation=generation):
            raise InvalidRequest(f"{uri} does not exist", code="input_not_found",
                                 details=[{"field": "input_uri", "code": "not_found", "message": "no such object"}])
        return uri

    def _undo(self, batch_id: str, inline_uri: str | None) -> None:
        try:
            self._store.delete(batch_id)
            if inline_uri is not None:
                self._inputs.delete(inline_uri)
        except DependencyUnavailable:
            log.error("could not undo batch %s", batch_id)
