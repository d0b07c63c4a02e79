"""Batches over the API (POST /v1/batches, GET /v1/batches[/{id}], POST /v1/batches/{id}/cancel): HTTP-free
and client-free use cases over the BatchStore, BatchInputs and BatchLauncher ports. A batch's input is OpenAI's
`input_file_id` (a file of POST /v1/files) with its `endpoint`, or one of llmq's extensions: `input_uri` (an
object of the batch bucket) or inline `input_jsonl`. The nightly workflow uses them too: `input_uri` + `input_generation` names one version of a bucket object, whose batch id is
derived from it (`batches.nightly_batch_id`), so asking again returns that batch, or resumes it if it failed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs import batches, tracing
from jobs.batches import BatchInputs, BatchLauncher, BatchRecord, BatchStore
from jobs.constants import FILES_PREFIX, NIGHTLY_PREFIX, ONDEMAND_PREFIX
from jobs.errors import DependencyUnavailable, IdempotencyConflict, InvalidRequest, NotFound
from jobs.files import UPLOAD_PURPOSES, FileService
from jobs.models import MAX_METADATA_PAIRS, MetadataKey, MetadataValue
from jobs.object_names import object_name_problem
from jobs.service import utcnow

log = logging.getLogger(__name__)

# Inputs must not come from where the platform writes. The nightly run's inbox only with a generation:
# that names the same batch the nightly run uses, so nothing runs twice.
# Uploaded files (files/) only by their id: that checks they are the caller's.
_RESERVED_PREFIXES = ("outbox/", "processed/", "failed/", FILES_PREFIX)
DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT = 20, 100  # OpenAI's for GET /v1/batches


class CreateBatchRequest(BaseModel):
    """The body of POST /v1/batches: OpenAI's `input_file_id` + `endpoint`, or the input as a gs:// object of
    the batch bucket, or inline."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    input_file_id: str | None = Field(default=None, min_length=1, max_length=128)
    # The one endpoint of every line (OpenAI's rule; a line with another url is an error line). Required with
    # input_file_id, as OpenAI requires it; without it, the extensions' lines may use either.
    endpoint: Literal["/v1/chat/completions", "/v1/completions"] | None = None
    input_uri: str | None = Field(default=None, min_length=6, max_length=2048)
    input_jsonl: str | None = Field(default=None, min_length=1)
    # With input_uri: that version of the object (its GCS generation); the batch id is derived from it.
    input_generation: str | None = Field(default=None, pattern=r"^[0-9]{1,20}$")
    # OpenAI's "24h"; llmq also takes a duration such as "90m" or "2h" (up to "7d"): by then the batch is
    # finished or ends `expired`, keeping its finished lines.
    completion_window: str = Field(default=batches.DEFAULT_COMPLETION_WINDOW, max_length=16)
    metadata: dict[MetadataKey, MetadataValue] | None = None

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        batches.window_length(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> CreateBatchRequest:
        if sum(x is not None for x in (self.input_file_id, self.input_uri, self.input_jsonl)) != 1:
            raise ValueError("exactly one of 'input_file_id', 'input_uri' and 'input_jsonl' is required")
        if self.input_generation is not None and self.input_uri is None:
            raise ValueError("'input_generation' needs 'input_uri'")
        if self.metadata is not None and len(self.metadata) > MAX_METADATA_PAIRS:
            raise ValueError(f"'metadata' takes at most {MAX_METADATA_PAIRS} pairs")
        return self


class BatchService:
    def __init__(self, *, store: BatchStore, inputs: BatchInputs, launcher: BatchLauncher, files: FileService,
                 bucket: str, ttl_seconds: int = batches.DEFAULT_BATCH_TTL_SECONDS,
                 nightly_tenants: Collection[str] = (), clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._files = files
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
        inline = request.input_jsonl is not None
        if request.input_file_id is not None:
            if request.endpoint is None:  # OpenAI requires it with a file
                raise InvalidRequest("'endpoint' is required with 'input_file_id'", details=[
                    {"field": "endpoint", "code": "required", "message": "/v1/chat/completions or /v1/completions"}])
            input_uri = self._input_file(request.input_file_id, tenant=tenant)
        elif request.input_uri is not None:
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
                               metadata=dict(request.metadata or {}), endpoint=request.endpoint,
                               input_file_id=request.input_file_id, completion_window=request.completion_window,
                               ttl_seconds=self._ttl)

    def _input_file(self, file_id: str, *, tenant: str) -> str:
        """The bytes' URI of the caller's uploaded file. Raises InvalidRequest naming input_file_id."""
        try:
            record = self._files.get(file_id, tenant=tenant)
        except NotFound:
            raise InvalidRequest(f"no file {file_id[:80]!r}", code="file_not_found", details=[
                {"field": "input_file_id", "code": "not_found", "message": "no such file"}]) from None
        if record.purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(f"file {file_id} has purpose {record.purpose!r}; a batch's input has purpose "
                                 "\"batch\"", details=[{"field": "input_file_id", "code": "invalid_purpose",
                                                          "message": "purpose must be batch"}])
        return record.uri

    def _output_prefix(self, batch_id: str) -> str:
        return f"gs://{self._bucket}/outbox/{batch_id}/"

    def _launch(self, record: BatchRecord, *, undo: Callable[[], object]) -> BatchRecord:
        """Start the runner for `record`; on failure `undo` and raise DependencyUnavailable."""
        try:
            # The launcher hands this span's context to the batch runner: its `batch` span joins the trace.
            with tracing.tracer().start_as_current_span("launch_batch", attributes={tracing.BATCH_ID: record.id}):
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

    def list(self, *, tenant: str, limit: int | None, after: str | None) -> dict[str, Any]:
        """OpenAI's list of batches, newest first; `after` is the last id of the previous page."""
        limit = DEFAULT_LIST_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be 1 to {MAX_LIST_LIMIT}", details=[
                {"field": "limit", "code": "out_of_range", "message": f"1 to {MAX_LIST_LIMIT}"}])
        cursor = None
        if after is not None:
            cursor = self._store.get(after) if batches.is_batch_id(after) else None
            if cursor is None or cursor.tenant != tenant:
                raise InvalidRequest(f"no batch {after[:80]!r} to list after", details=[
                    {"field": "after", "code": "not_found", "message": "no such batch"}])
        records, has_more = self._store.list(tenant, limit=limit, after=cursor)
        data = [record.view() for record in records]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": has_more}

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
