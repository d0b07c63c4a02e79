"""The runner's ASGI app: Pub/Sub push in, ack protocol out, plus health probes.

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
from collections.abc import AsyncIterator

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jobs.adapters.clients import firestore_client, storage_client
from jobs.adapters.firestore_store import FirestoreJobStore
from jobs.adapters.gcs_results import GcsResultStore
from jobs.engine import Engine, EngineDead
from jobs.errors import DependencyUnavailable, Unauthenticated
from jobs.logs import configure_logging
from jobs.push import PushEnvelope, UnreadableMessage, decode_job_message
from jobs.push_auth import PushVerifier
from runner.engines import start_engine
from runner.processor import JobProcessor, Outcome
from runner.settings import RunnerSettings, runner_settings

log = logging.getLogger(__name__)


class RunnerState:
    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.processor: JobProcessor | None = None
        self.load_error: BaseException | None = None
        self.dead = False

    async def load(self) -> None:
        try:
            engine = await start_engine(self.settings)
            store = FirestoreJobStore(firestore_client(self.settings.project, self.settings.database))
            results = GcsResultStore(storage_client(self.settings.project), bucket=self.settings.results_bucket)
            processor = JobProcessor(store=store, results=results, engine=engine, settings=self.settings)
            await processor.start()
            self.processor, self.engine = processor, engine
            log.info("engine ready", extra={"status": "ready"})
        except Exception as err:  # the instance cannot serve: let the platform replace it
            self.load_error = err
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


def create_app(settings: RunnerSettings | None = None) -> Starlette:
    state = RunnerState(settings or runner_settings())
    s = state.settings
    verifier = (PushVerifier(audience=s.push_audience, service_account=s.push_service_account,
                             certs_url=s.push_certs_url) if s.push_audience else None)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        configure_logging()
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
        if verifier is not None:
            try:
                await asyncio.to_thread(verifier.verify, request.headers.get("authorization"))
            except Unauthenticated as err:
                # Forged or misrouted: Pub/Sub retries and dead-letters it, which is intended.
                log.warning("push rejected: %s", err.message)
                return JSONResponse(err.to_body(), status_code=401)
            except DependencyUnavailable:
                return _answer(Outcome.retry("token certificates unavailable"))
        try:
            envelope = PushEnvelope.model_validate_json(await request.body())
        except ValidationError:
            # No job to mark failed: refuse, so Pub/Sub dead-letters it for inspection.
            return JSONResponse({"error": "not a Pub/Sub push envelope"}, status_code=400)
        if state.dead or state.processor is None:
            return _answer(Outcome.retry("engine not ready", after=10))
        try:
            message = decode_job_message(envelope)
        except UnreadableMessage as err:
            if err.job_id is None:
                return JSONResponse({"error": str(err)}, status_code=400)
            return _answer(await state.processor.reject(err.job_id, str(err)))
        try:
            outcome = await state.processor.process(message)
        except EngineDead:
            state.die()
            outcome = Outcome.retry("engine died")
        log.info("push answered", extra={"job_id": message.job_id, "outcome": outcome.reason})
        return _answer(outcome)

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

    return Starlette(
        routes=[
            Route("/push", push, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _answer(outcome: Outcome) -> Response:
    headers = {"Retry-After": str(int(outcome.retry_after))} if outcome.retry_after else None
    return JSONResponse({"outcome": outcome.reason}, status_code=outcome.status, headers=headers)
