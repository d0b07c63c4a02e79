"""The runner's ASGI app: Pub/Sub push in, ack protocol out, plus health probes.

`_answer` is the one place an `Outcome` becomes an HTTP status: 2xx acknowledges, 429/503 (with
Retry-After) asks Pub/Sub to redeliver later, 400/401 refuses a push that can never be processed here (Pub/Sub
retries it and dead-letters it for inspection). Every answer has the body `{"outcome": <reason>}`.

The engine loads in the background after start-up, so the port answers at once: the startup
probe (/readyz) reports 503 until the model is loaded, and so does a push that arrives early.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from opentelemetry.trace import SpanKind
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobs import tracing
from jobs.adapters.clients import firestore_client, storage_client
from jobs.adapters.firestore_store import FirestoreJobStore
from jobs.adapters.gcs_results import GcsResultStore
from jobs.adapters.id_tokens import IdTokenVerifier
from jobs.engine import Engine, EngineDead
from jobs.errors import DependencyUnavailable, Unauthenticated
from jobs.logs import configure_logging
from jobs.ports import JobStore, ResultStore
from jobs.push import PushEnvelope, UnreadableMessage, decode_job_message
from jobs.service import utcnow
from jobs.webhooks import Announcer
from runner import metrics
from runner.engines import start_engine
from runner.outcome import Disposition, Outcome
from runner.processor import JobProcessor
from runner.settings import RunnerSettings, runner_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerPorts:
    engine: Engine
    store: JobStore
    results: ResultStore
    announcer: Announcer | None = None  # None: webhooks are off


async def cloud_ports(settings: RunnerSettings) -> RunnerPorts:
    """The runner's ports in production and in the local stack: the configured engine, Firestore and GCS."""
    engine = await start_engine(settings)
    store = FirestoreJobStore(firestore_client(settings.project, settings.database))
    results = GcsResultStore(storage_client(settings.project), bucket=settings.results_bucket)
    announcer = None
    if settings.webhook_topic:
        from jobs.adapters.clients import publisher_client
        from jobs.adapters.webhook_store import FirestoreEndpointStore, PubSubDeliveryQueue

        announcer = Announcer(endpoints=FirestoreEndpointStore(firestore_client(settings.project, settings.database)),
                              queue=PubSubDeliveryQueue(publisher_client(), project=settings.project,
                                                        topic=settings.webhook_topic), clock=utcnow)
    return RunnerPorts(engine=engine, store=store, results=results, announcer=announcer)


class RunnerState:
    def __init__(self, settings: RunnerSettings, connect: Callable[[RunnerSettings], Awaitable[RunnerPorts]]) -> None:
        self.settings = settings
        self._connect = connect
        self.engine: Engine | None = None
        self.processor: JobProcessor | None = None
        self.dead = False

    async def load(self) -> None:
        try:
            ports = await self._connect(self.settings)
            engine = ports.engine
            processor = JobProcessor(store=ports.store, results=ports.results, engine=engine, settings=self.settings,
                                     announcer=ports.announcer)
            await processor.start()
            self.processor, self.engine = processor, engine
            log.info("engine ready", extra={"status": "ready"})
        except Exception:  # the instance cannot serve: let the platform replace it
            log.exception("engine failed to load")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        await self.watch(engine)

    async def watch(self, engine: Engine) -> None:
        """Check the engine now and then, so an engine that dies while no push arrives (vLLM's engine-core
        process killed, out of memory) still ends the instance instead of leaving it up and useless."""
        while not self.dead:
            await asyncio.sleep(self.settings.health_check_interval_seconds)
            try:
                await engine.check_health()
            except EngineDead:
                self.die()

    def die(self) -> None:
        """EngineDead: report unhealthy and exit, so Cloud Run (or the local stack) starts a new instance."""
        if not self.dead:
            self.dead = True
            log.error("engine is dead; exiting")
            os.kill(os.getpid(), signal.SIGTERM)


def create_app(settings: RunnerSettings | None = None,
               connect: Callable[[RunnerSettings], Awaitable[RunnerPorts]] = cloud_ports) -> Starlette:
    """The ASGI app; `connect` builds the ports once the port is open (the fast tests pass in-memory ones)."""
    state = RunnerState(settings or runner_settings(), connect)
    s = state.settings
    verifier = (IdTokenVerifier(audiences=[s.push_audience], certs_url=s.push_certs_url,
                                service_accounts=[s.push_service_account] if s.push_service_account else None)
                if s.push_audience else None)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        configure_logging()
        tracing.configure_tracing("runner", exporter=s.trace_exporter, directory=s.trace_dir, project=s.project)
        loader = asyncio.create_task(state.load())
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loader
            if state.processor is not None:
                with contextlib.suppress(Exception):
                    await state.processor.stop()
            if state.engine is not None:
                await state.engine.shutdown()

    async def push(request: Request) -> Response:
        outcome = await deliver(request)
        if outcome.disposition in (Disposition.UNDELIVERABLE, Disposition.UNAUTHENTICATED):
            log.warning("push refused: %s", outcome.reason)
        answer = _answer(outcome)
        metrics.PUSHES.labels(code=str(answer.status_code)).inc()
        return answer

    async def deliver(request: Request) -> Outcome:
        if verifier is not None:
            try:
                await asyncio.to_thread(verifier.verify, request.headers.get("authorization"))
            except Unauthenticated as err:
                return Outcome.unauthenticated(err.message)
            except DependencyUnavailable:
                return Outcome.retry("token certificates unavailable")
        try:
            envelope = PushEnvelope.model_validate_json(await request.body())
        except ValidationError:
            return Outcome.undeliverable("not a Pub/Sub push envelope")  # no job to mark failed
        if state.dead or state.processor is None:
            return Outcome.retry("engine not ready", after=10)
        try:
            message = decode_job_message(envelope)
        except UnreadableMessage as err:
            if err.job_id is None:
                return Outcome.undeliverable(str(err))
            return await state.processor.reject(err.job_id, str(err))
        # The job's trace goes on from the submission's publish span, whose context the attributes carry.
        parent = tracing.extract(envelope.message.attributes)
        published = _publish_time(envelope.message.publish_time)
        if published is not None:  # the time the message waited in Pub/Sub, as a span of its own
            with tracing.job_span("queue", message.job_id, parent=parent, start_time=published):
                pass
        with tracing.job_span("push", message.job_id, parent=parent, kind=SpanKind.CONSUMER,
                              attributes={"messaging.message.id": envelope.message.message_id,
                                          "llmq.delivery_attempt": envelope.delivery_attempt or 0}) as span:
            try:
                outcome = await state.processor.process(message)
            except EngineDead:
                state.die()
                outcome = Outcome.retry("engine died")
            tracing.record_outcome(span, outcome.reason, error=outcome.disposition is Disposition.RETRY)
            log.info("push answered", extra={"job_id": message.job_id, "outcome": outcome.reason})
        return outcome

    async def healthz(_request: Request) -> Response:
        if state.dead:
            return JSONResponse({"status": "dead"}, status_code=503)
        return JSONResponse({"status": "alive"})

    async def readyz(_request: Request) -> Response:
        if state.engine is None or state.dead:
            return JSONResponse({"status": "loading" if not state.dead else "dead"}, status_code=503)
        try:
            await state.engine.check_health()
        except EngineDead:
            state.die()
            return JSONResponse({"status": "dead"}, status_code=503)
        info = state.engine.info
        body = {"status": "ready", "model": info.model, "inflight": state.processor.inflight if state.processor else 0}
        body["engine"] = dataclasses.asdict(state.engine.stats)
        return JSONResponse(body)

    async def prometheus(_request: Request) -> Response:
        body = metrics.render(inflight=state.processor.inflight if state.processor else 0,
                              engine=state.engine.stats if state.engine is not None else None)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/push", push, methods=["POST"]),
            Route("/metrics", prometheus, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


_STATUS = {
    Disposition.DONE: 200,
    Disposition.FAILED: 200,  # acknowledged: redelivering cannot help, and the document says why
    Disposition.RETRY: 503,
    Disposition.SATURATED: 429,
    Disposition.UNDELIVERABLE: 400,
    Disposition.UNAUTHENTICATED: 401,
}


def _publish_time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _answer(outcome: Outcome) -> Response:
    headers = {"Retry-After": str(int(outcome.retry_after))} if outcome.retry_after else None
    return JSONResponse({"outcome": outcome.reason}, status_code=_STATUS[outcome.disposition], headers=headers)
