"""One push delivery of one job: claim under a lease, generate, write the result, finish.

Each delivery ends in a domain `Outcome` (runner/outcome.py); runner/app.py alone maps it onto the ack
protocol. Engine errors are decided here on purpose: a request the engine rejects fails the job (as in the
batch runner), a transient engine or dependency error asks for redelivery. Every store call runs in a
worker thread (the Google clients are synchronous) so the event loop keeps feeding the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import anyio
from opentelemetry import trace
from opentelemetry.trace import Span

from jobs import lifecycle, tracing
from jobs.announce import announce_job
from jobs.engine import Engine, EngineDead, EngineError, FinishReason, GenerationUpdate, PromptTooLong, RequestRejected
from jobs.errors import DependencyUnavailable
from jobs.lifecycle import ClaimDecision, ClaimOutcome, Completion, Lease
from jobs.models import JobErrorCode, JobMessage, JobRecord, Usage
from jobs.ports import JobStore, ResultStore
from jobs.results import document_output, openai_response
from jobs.service import utcnow
from jobs.webhooks import Announcer
from runner import metrics
from runner.outcome import Outcome
from runner.settings import RunnerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobProcessor:
    def __init__(
        self,
        *,
        store: JobStore,
        results: ResultStore,
        engine: Engine,
        settings: RunnerSettings,
        announcer: Announcer | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._announcer = announcer
        self._results = results
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._inflight = 0
        self._waiting_batch = 0
        self._slot_freed = asyncio.Condition()
        self._threads = anyio.CapacityLimiter(max(16, settings.max_inflight * 2))
        self.instance = f"runner-{uuid.uuid4().hex[:12]}"
        # job id -> (lease owner, engine request id, its generate span: a cancellation is logged in the job's trace)
        self._running: dict[str, tuple[str, str, Span]] = {}
        self._leases: dict[str, Lease] = {}  # delivery -> its lease, as last written by that delivery
        self._stop_watching: Callable[[], None] | None = None

    async def start(self) -> None:
        """Listen for cancellations of the jobs this instance holds (one listener per instance)."""
        loop = asyncio.get_running_loop()

        def on_cancelled(job_id: str, owner: str) -> None:
            loop.call_soon_threadsafe(self._abort_cancelled, job_id, owner)

        self._stop_watching = await self._call(self._store.watch_cancelled, self.instance, on_cancelled)

    async def stop(self) -> None:
        if self._stop_watching is not None:
            await self._call(self._stop_watching)
            self._stop_watching = None

    def _abort_cancelled(self, job_id: str, owner: str) -> None:
        held = self._running.get(job_id)
        if held is not None and held[0] == owner:
            with trace.use_span(held[2]):
                log.info("cancelled by the client; aborting", extra={"job_id": job_id, "delivery": owner})
            asyncio.ensure_future(self._engine.abort(held[1]))

    @property
    def inflight(self) -> int:
        return self._inflight

    async def process(self, message: JobMessage) -> Outcome:
        """Raises EngineDead only (the instance must go); every other failure is an outcome."""
        # Backpressure: refuse rather than queue past the ack deadline; batch work leaves the reserved
        # slots to interactive work, and waits a while for a slot of its own.
        if not await self._admit(message.request.priority):
            return Outcome.saturated("runner saturated", after=2)
        self._inflight += 1
        owner = f"delivery-{uuid.uuid4().hex[:16]}"
        try:
            return await self._process(message, owner=owner)
        except DependencyUnavailable as err:
            log.warning("dependency unavailable; asking for redelivery: %s", err, extra={"job_id": message.job_id})
            return Outcome.retry("dependency unavailable")
        except EngineDead:
            raise
        except EngineError as err:  # transient by the port's contract: another delivery may succeed
            log.warning("engine error; asking for redelivery: %s", err, extra={"job_id": message.job_id})
            return Outcome.retry("engine error")
        except Exception:  # a defect: redelivered until dead-lettered, and the document then says so
            log.exception("unexpected error; asking for redelivery", extra={"job_id": message.job_id})
            return Outcome.retry("unexpected error", after=10)
        finally:
            self._leases.pop(owner, None)
            self._inflight -= 1
            async with self._slot_freed:
                self._slot_freed.notify_all()

    async def _admit(self, priority: str) -> bool:
        """Whether this push may start now: interactive ones up to max_inflight; batch ones up to the slots
        not reserved for interactive work, after waiting for one if need be."""
        s = self._settings
        if priority != "batch":
            return self._inflight < s.max_inflight
        limit = s.max_inflight - s.interactive_reserved_slots
        if self._inflight < limit:
            return True
        if self._waiting_batch >= s.max_waiting_batch_pushes:
            return False
        self._waiting_batch += 1
        try:
            async with asyncio.timeout(s.batch_wait_seconds), self._slot_freed:
                await self._slot_freed.wait_for(lambda: self._inflight < limit)
            return True  # nothing awaits between here and the caller taking the slot
        except TimeoutError:
            return False
        finally:
            self._waiting_batch -= 1

    async def reject(self, job_id: str, reason: str) -> Outcome:
        """A message that can never be processed: mark its job failed and acknowledge."""
        try:
            now = self._clock()
            await self._ended(await self._call(
                self._store.update, job_id,
                lambda current: lifecycle.fail(current, now=now, code=JobErrorCode.INVALID_MESSAGE, message=reason),
            ))
        except DependencyUnavailable:
            return Outcome.retry("dependency unavailable")
        return Outcome.failed("rejected: invalid message")

    async def _ended(self, written: tuple[JobRecord | None, bool]) -> None:
        """After a write that may have ended the job: announce its webhook event (jobs/webhooks.py) before the
        push is acknowledged. Not announced (a failure, or this process dying first), it stays pending: the
        message's redelivery finds the job finished and announces it then, or the reconciler does."""
        record, _ = written
        if self._announcer is not None and record is not None and record.pending_event is not None:
            await self._call(announce_job, self._announcer, self._store, record)

    async def _process(self, message: JobMessage, *, owner: str) -> Outcome:
        job_id = message.job_id
        served = self._engine.info.model
        if message.model != served:
            # This runner serves one model (its subscription filters on it): permanent for the job here.
            now = self._clock()
            await self._ended(await self._call(self._store.update, job_id, lambda current: lifecycle.fail(
                current, now=now, code=JobErrorCode.MODEL_NOT_SERVED,
                message=f"model {message.model!r} is not served here")))
            return Outcome.failed("failed: model not served")
        try:
            with tracing.job_span("claim", job_id) as span:
                decision = await self._claim(job_id, owner)
                span.set_attribute("llmq.claim", decision.outcome.value if decision is not None else "no_job")
        except DependencyUnavailable:
            # The claim's answer was lost, not necessarily its write: had it landed, this delivery would hold
            # a lease it never uses, and the redelivery would be refused until the lease lapsed. Hand it back
            # (only if it is ours; if Firestore is still unreachable, the lease lapses as before).
            with contextlib.suppress(DependencyUnavailable):
                await self._release(job_id, owner)
            raise
        if decision is None:
            # No document: expired by TTL, or the submit was undone after its publish failed.
            return Outcome.done("no such job")
        if decision.outcome is ClaimOutcome.FINISHED:
            await self._ended((decision.current, False))  # a redelivery: its end may not be announced yet
            return Outcome.done("already finished")
        if decision.outcome is ClaimOutcome.EXPIRED:
            await self._ended((decision.record, True))
            return Outcome.done("deadline exceeded before start")
        if decision.outcome is ClaimOutcome.LEASED:
            return Outcome.saturated("held by another delivery", after=decision.retry_after)
        record, lease = decision.record, decision.lease
        assert record is not None and lease is not None
        self._leases[owner] = lease
        log.info("claimed", extra={"job_id": job_id, "delivery": owner, "attempt": record.attempts})

        try:
            try:
                update, timings = await self._generate(message, record, owner)
            except PromptTooLong as err:
                await self._fail(job_id, owner, JobErrorCode.CONTEXT_LENGTH_EXCEEDED, str(err))
                self._count_end("failed")
                return Outcome.failed("failed: prompt too long")
            except RequestRejected as err:
                await self._fail(job_id, owner, JobErrorCode.REJECTED_BY_ENGINE, str(err)[:500])
                self._count_end("failed")
                return Outcome.failed("failed: rejected by the engine")
            return await self._finish(record, owner, update, timings)
        except BaseException:
            # Retryable trouble, a dead engine or shutdown: hand the job back at once rather than
            # at lease expiry, so the redelivery can take it over.
            with contextlib.suppress(Exception):
                await self._release(job_id, owner)
            raise

    async def _claim(self, job_id: str, owner: str) -> ClaimDecision | None:
        decisions: list[ClaimDecision] = []

        def mutate(current: JobRecord) -> JobRecord | None:
            decision = lifecycle.decide_claim(
                current, owner=owner, instance=self.instance, now=self._clock(),
                lease_seconds=self._settings.lease_seconds,
            )
            decisions.append(decision)
            return decision.record

        record, _ = await self._call(self._store.update, job_id, mutate)
        return decisions[-1] if record is not None else None

    async def _generate(
        self, message: JobMessage, record: JobRecord, owner: str
    ) -> tuple[GenerationUpdate, dict[str, float]]:
        with tracing.job_span("generate", record.id, attributes={"llmq.model": record.model}) as span:
            last, timings = await self._run_engine(message, record, owner, span)
            span.set_attributes({"llmq.prompt_tokens": last.prompt_tokens,
                                 "llmq.completion_tokens": last.completion_tokens,
                                 "llmq.finish_reason": (last.finish_reason or FinishReason.STOP).value})
            return last, timings

    async def _run_engine(
        self, message: JobMessage, record: JobRecord, owner: str, span: Span
    ) -> tuple[GenerationUpdate, dict[str, float]]:
        request = message.request.to_generation(f"{record.id}.{owner}")
        started = time.monotonic()
        first_token_at: float | None = None
        last: GenerationUpdate | None = None
        background = [asyncio.create_task(self._keep_lease(record.id, owner, request.request_id))]
        if record.stream:
            background.append(asyncio.create_task(self._stream(record.id, owner, lambda: last)))
        self._running[record.id] = (owner, request.request_id, span)
        try:
            async with asyncio.timeout(self._settings.generation_timeout_seconds):
                async for update in self._engine.generate(request):
                    if first_token_at is None and update.completion_tokens > 0:
                        first_token_at = time.monotonic()
                        span.add_event("first_token")
                    last = update
        except TimeoutError:
            # The per-job budget is spent: keep what was generated, as a length stop.
            if last is None:
                raise DependencyUnavailable("generation produced nothing within its time budget") from None
            last = GenerationUpdate(last.text, last.prompt_tokens, last.completion_tokens, FinishReason.LENGTH)
        finally:
            self._running.pop(record.id, None)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        assert last is not None
        elapsed = time.monotonic() - started
        timings = {
            "queue_seconds": (record.started_at - record.created_at).total_seconds() if record.started_at else 0.0,
            "generation_seconds": round(elapsed, 4),
            "time_to_first_token_seconds": round((first_token_at or time.monotonic()) - started, 4),
            "tokens_per_second": round(last.completion_tokens / elapsed, 2) if elapsed > 0 else 0.0,
        }
        return last, timings

    async def _stream(self, job_id: str, owner: str, latest: Callable[[], GenerationUpdate | None]) -> None:
        """Write the partial output of a `stream` job at most once per interval (Firestore sustains
        about one write per second per document); the final write supersedes it."""
        written = ""
        while True:
            await asyncio.sleep(self._settings.stream_interval_seconds)
            update = latest()
            if update is None or update.text == written:
                continue
            text = document_output(update.text)
            try:
                await self._call(self._store.update, job_id,
                                 lambda current, text=text: lifecycle.stream_output(current, owner=owner, output=text))
            except DependencyUnavailable:
                continue  # a skipped partial write loses nothing: the next or the final one carries it
            written = update.text

    async def _keep_lease(self, job_id: str, owner: str, request_id: str) -> None:
        """Renew the lease while generating; if it was lost (cancelled, taken over), abort."""
        while True:
            await asyncio.sleep(self._leases[owner].renew_interval)
            try:
                held = await self._renew(job_id, owner)
            except DependencyUnavailable:
                continue  # the lease still has two intervals left; try again
            if not held:
                log.info("lease lost; aborting generation", extra={"job_id": job_id, "delivery": owner})
                await self._engine.abort(request_id)
                return

    async def _renew(self, job_id: str, owner: str) -> bool:
        """Extend this delivery's lease; False if it no longer holds the job."""
        renewed = self._leases[owner].extended(self._clock())
        _, changed = await self._call(self._store.update, job_id, lambda current: lifecycle.renew(current, renewed))
        if changed:
            self._leases[owner] = renewed
        return changed

    async def _fence(self, job_id: str, owner: str) -> bool:
        """Make sure no other delivery can take the job over while the result object is written."""
        if not self._leases[owner].needs_fence(self._clock()):
            return True
        return await self._renew(job_id, owner)

    async def _finish(
        self, record: JobRecord, owner: str, update: GenerationUpdate, timings: dict[str, float]
    ) -> Outcome:
        usage = Usage(
            prompt_tokens=update.prompt_tokens,
            completion_tokens=update.completion_tokens,
            total_tokens=update.prompt_tokens + update.completion_tokens,
        )
        now = self._clock()
        if update.finish_reason is FinishReason.ABORT:
            # Aborted because the job was cancelled (keep the partial output in the document) or
            # because the lease was lost (then someone else owns the job and nothing is written).
            partial = Completion(output=document_output(update.text), finish_reason="cancelled", usage=usage,
                                 result_uri=None, metrics=timings)
            _, changed = await self._call(
                self._store.update, record.id,
                lambda current: lifecycle.record_partial(current, owner=owner, completion=partial),
            )
            log.info("aborted", extra={"job_id": record.id, "delivery": owner, "outcome": "cancelled"})
            self._count_end("cancelled" if changed else None)
            return Outcome.done("cancelled" if changed else "lease lost")

        finish_reason = (update.finish_reason or FinishReason.STOP).value
        body = openai_response(
            response_id=record.id, kind=record.kind, model=record.model, created=record.created_at,
            text=update.text, finish_reason=finish_reason, usage=usage,
        )
        body["timings"] = timings
        # Fence: no other delivery may take the job over (and write its own object) while ours is written.
        if not await self._fence(record.id, owner):
            self._count_end(None)
            return Outcome.done("lease lost")
        # Deterministic object name: a retried finish overwrites, never duplicates.
        with tracing.job_span("result_write", record.id):
            uri = await self._call(self._results.write_result, record.id, body)
        completion = Completion(
            output=document_output(update.text), finish_reason=finish_reason, usage=usage,
            result_uri=uri, metrics=timings,
        )
        with tracing.job_span("finish", record.id) as span:
            written = await self._call(
                self._store.update, record.id,
                lambda current: lifecycle.complete(current, owner=owner, now=now, completion=completion),
            )
            changed = written[1]
            tracing.record_outcome(span, "succeeded" if changed else "lease lost")
        if changed:
            await self._ended(written)
            metrics.observe_job(timings, latency_seconds=(now - record.created_at).total_seconds())
        self._count_end("succeeded" if changed else None)
        log.info("finished" if changed else "lease lost before finish; result dropped",
                 extra={"job_id": record.id, "delivery": owner, "outcome": finish_reason})
        return Outcome.done("succeeded" if changed else "lease lost")

    @staticmethod
    def _count_end(outcome: str | None) -> None:
        """A delivery that ended its job (None: it found its lease lost, and wrote nothing)."""
        if outcome is None:
            metrics.LOST_CLAIMS.inc()
        else:
            metrics.JOBS.labels(outcome=outcome).inc()

    async def _fail(self, job_id: str, owner: str, code: JobErrorCode, message: str) -> None:
        now = self._clock()
        await self._ended(await self._call(
            self._store.update, job_id,
            lambda current: lifecycle.fail(current, now=now, code=code, message=message, owner=owner),
        ))
        log.info("failed permanently", extra={"job_id": job_id, "delivery": owner, "outcome": code})

    async def _release(self, job_id: str, owner: str) -> None:
        """Let the next delivery take the job over at once."""
        now = self._clock()
        await self._call(self._store.update, job_id, lambda current: lifecycle.release(current, owner=owner, now=now))

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)
