"""The API's use cases: submit, read, wait for and cancel jobs. HTTP-free and client-free."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from opentelemetry.trace import Span, SpanKind

from jobs import lifecycle, tracing
from jobs.announce import announce_job
from jobs.catalog import ModelCatalog
from jobs.errors import DependencyUnavailable, IdempotencyConflict, InvalidRequest, NotFound
from jobs.ids import is_job_id, new_job_id
from jobs.models import INPUT_FIELD, JobMessage, JobRecord, JobRequest, JobView
from jobs.ports import JobStore, Publisher
from jobs.quotas import Quota, QuotaGuard
from jobs.state import JobStatus
from jobs.webhooks import Announcer

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobService:
    def __init__(
        self,
        *,
        store: JobStore,
        publisher: Publisher,
        catalog: ModelCatalog,
        quota: Quota | None = None,
        max_prompt_chars_per_token: int = 16,
        announcer: Announcer | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._announcer = announcer
        self._publisher = publisher
        self._catalog = catalog
        self._quota = QuotaGuard(store, quota) if quota is not None else None
        self._max_chars_per_token = max_prompt_chars_per_token
        self._clock = clock

    def submit(self, request: JobRequest, *, tenant: str, idempotency_key: str | None) -> tuple[JobView, bool]:
        """Store and enqueue a job. Returns (view, created); created is False when an earlier
        submission with the same idempotency key and body is returned instead.

        Raises InvalidRequest, IdempotencyConflict, DependencyUnavailable (nothing left queued).
        The submission is the first span of the job's trace; the trace id is recorded on the job.
        """
        with tracing.tracer().start_as_current_span("submit", attributes={"llmq.tenant": tenant}) as span:
            view, created = self._submit(request, tenant=tenant, idempotency_key=idempotency_key, span=span)
            span.set_attribute(tracing.JOB_ID, view.id)
            tracing.record_outcome(span, "created" if created else "existing")
            return view, created

    def _submit(self, request: JobRequest, *, tenant: str, idempotency_key: str | None,
                span: Span) -> tuple[JobView, bool]:
        key = self._idempotency_key(request, idempotency_key)
        spec = self._catalog.resolve(request.model)
        if spec is None:
            names = self._catalog.names()
            raise InvalidRequest(
                f"unknown model {request.model!r}; this deployment serves: {names}",
                code="model_not_found",
                details=[{"field": "model", "code": "unknown_model", "message": f"one of: {names}"}],
            )
        if request.max_tokens > spec.max_tokens:
            raise InvalidRequest(
                f"max_tokens must be at most {spec.max_tokens} for model {spec.id}",
                details=[{"field": "max_tokens", "code": "too_large", "message": f"at most {spec.max_tokens}"}],
            )
        # Without the model's tokenizer at hand, bound the prompt by what cannot possibly fit; the
        # runner checks the exact token count and fails the job (context_length_exceeded).
        limit = spec.max_model_len * self._max_chars_per_token
        if request.prompt_chars > limit:
            field = INPUT_FIELD[request.kind]
            raise InvalidRequest(
                f"the prompt is {request.prompt_chars} characters; model {spec.id} takes {spec.max_model_len} tokens",
                code="context_length_exceeded",
                details=[{"field": field, "code": "too_long", "message": f"at most {limit} characters"}],
            )

        now = self._clock()
        if self._quota is not None:
            self._quota.check(tenant, now=now)
        job_id = new_job_id(tenant=tenant, idempotency_key=key)
        record = JobRecord(
            id=job_id,
            tenant=tenant,
            status=JobStatus.QUEUED,
            model=spec.id,
            kind=request.kind,
            priority=request.priority,
            stream=request.stream,
            created_at=now,
            expire_at=now + timedelta(seconds=request.ttl_seconds),
            request_hash=request.body_hash(),
            metadata=dict(request.metadata or {}),
            deadline_at=now + timedelta(seconds=request.deadline_seconds) if request.deadline_seconds else None,
            trace_id=tracing.trace_id_of(span),
        )
        message = JobMessage(job_id=job_id, tenant=tenant, model=spec.id, request=request)

        if not self._store.create(record, message):
            return self._existing(job_id, record.request_hash), False
        if self._quota is not None:
            self._quota.accepted(tenant)
        try:
            with tracing.job_span("publish", job_id, kind=SpanKind.PRODUCER):
                message.trace_headers = tracing.inject()  # the runner's spans continue this one
                self._publisher.publish(message)
        except DependencyUnavailable:
            self._undo(job_id)
            raise
        return record.view(), True

    def get(self, job_id: str, *, tenant: str, wait_seconds: float = 0) -> JobView:
        """The job view; with wait_seconds, held until the job is final or the time passes.
        Raises NotFound for a malformed, unknown or other tenant's id."""
        record = self._owned(job_id, tenant)
        if wait_seconds > 0 and not record.status.is_final:
            record = self._store.wait_until_final(job_id, wait_seconds) or record
        return record.view()

    def cancel(self, job_id: str, *, tenant: str) -> JobView:
        self._owned(job_id, tenant)
        now = self._clock()
        record, _ = self._store.update(job_id, lambda current: lifecycle.cancel(current, now=now))
        if record is None:
            raise NotFound(f"job {job_id} not found")
        # Announced here (a cancel asked again announces again, under the same event id), else by the reconciler.
        announce_job(self._announcer, self._store, record)
        return record.view()

    def _owned(self, job_id: str, tenant: str) -> JobRecord:
        record = self._store.get(job_id) if is_job_id(job_id) else None
        # Another tenant's job reads exactly like a missing one: no existence leak.
        if record is None or record.tenant != tenant:
            raise NotFound(f"job {job_id} not found")
        return record

    def _existing(self, job_id: str, request_hash: str) -> JobView:
        existing = self._store.get(job_id)
        if existing is None:
            # The first submission with this key is being undone right now (its publish failed).
            raise DependencyUnavailable("a submission with this idempotency key is in flight; retry")
        if existing.request_hash != request_hash:
            raise IdempotencyConflict("this idempotency key was used with a different request body")
        return existing.view()

    def _undo(self, job_id: str) -> None:
        try:
            self._store.delete(job_id)
        except DependencyUnavailable:
            # Left queued and unpublished: the reconciler republishes queued jobs past a threshold.
            log.error("publish failed and undo failed; left for the reconciler", extra={"job_id": job_id})

    @staticmethod
    def _idempotency_key(request: JobRequest, header: str | None) -> str | None:
        if header is not None and request.idempotency_key is not None and header != request.idempotency_key:
            raise InvalidRequest(
                "the Idempotency-Key header and the idempotency_key field differ",
                details=[{"field": "idempotency_key", "code": "mismatch", "message": "must equal the header"}],
            )
        key = header if header is not None else request.idempotency_key
        if key is not None and not (1 <= len(key) <= 255):
            raise InvalidRequest(
                "Idempotency-Key must be 1 to 255 characters",
                details=[{"field": "Idempotency-Key", "code": "invalid_length", "message": "1 to 255 characters"}],
            )
        return key
