"""The asyncio client: the same surface as llmq.Client, every method a coroutine (`stream` and `map`
async iterators)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Self

import httpx

from llmq import _core
from llmq._listen import JobListener
from llmq.batches import AsyncBatches
from llmq.client import Via
from llmq.config import Config, resolve
from llmq.errors import APIConnectionError, ConfigurationError, LlmqError, RateLimitError, WaitTimeoutError
from llmq.progress import MapProgress
from llmq.types import Job, MapResult, Model

log = logging.getLogger("llmq")


class AsyncClient:
    """See llmq.Client: the same arguments and methods, awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, stack_json: str | None = None,
                 firestore_project: str | None = None, listen: bool | None = None, timeout: float = 30.0,
                 max_retries: int = 4) -> None:
        self.config: Config = resolve(base_url, api_key, stack_json=stack_json, firestore_project=firestore_project)
        if listen and self.config.firestore is None:
            raise ConfigurationError("listen=True needs Firestore access (a local stack or LLMQ_FIRESTORE_PROJECT)")
        self.listen = self.config.firestore is not None if listen is None else listen
        self.max_retries = max_retries
        self._http = httpx.AsyncClient(base_url=self.config.base_url, timeout=timeout,
                                       headers=_core.headers(self.config.api_key))
        self.batches = AsyncBatches(self)

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None, timeout: float | None = None,
                      files: dict[str, Any] | None = None, data: dict[str, str] | None = None,
                      retries: int | None = None) -> Any:
        retries = self.max_retries if retries is None else retries
        attempt = 0
        while True:
            try:
                try:
                    response = await self._http.request(
                        method, path, json=json, params=params, headers=headers, files=files, data=data,
                        timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
                except httpx.TransportError as err:
                    raise APIConnectionError(f"{method} {path}: {err!r}") from err
                return _core.parse(response)
            except LlmqError as err:
                if attempt >= retries or not _core.is_retryable(err):
                    raise
                delay = _core.retry_delay(attempt, getattr(err, "retry_after", None))
                log.info("retrying", extra={"path": path, "attempt": attempt + 1, "delay_seconds": round(delay, 2),
                                            "reason": getattr(err, "code", type(err).__name__)})
                await asyncio.sleep(delay)
                attempt += 1

    async def submit(self, prompt: str | None = None, *, messages: list[dict[str, Any]] | None = None,
                     model: str | None = None, max_tokens: int | None = None, priority: str | None = None,
                     stream: bool | None = None, metadata: dict[str, str] | None = None,
                     deadline_seconds: float | None = None, idempotency_key: str | None = None,
                     **params: Any) -> Job:
        body = _core.job_body(prompt, messages, {"model": model, "max_tokens": max_tokens, "priority": priority,
                                                 "stream": stream, "metadata": metadata,
                                                 "deadline_seconds": deadline_seconds, **params})
        return await self._submit_body(body, idempotency_key or _core.new_idempotency_key())

    async def _submit_body(self, body: dict[str, Any], key: str) -> Job:
        job = Job.model_validate(await self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}))
        log.info("submitted", extra={"job_id": job.id})
        return job

    async def get(self, job_id: str) -> Job:
        return Job.model_validate(await self.request("GET", f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate(await self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    async def models(self) -> list[Model]:
        return [Model.model_validate(m) for m in (await self.request("GET", "/v1/models"))["data"]]

    def _use_listener(self, via: Via) -> bool:
        if via == "listener" and self.config.firestore is None:
            raise ConfigurationError("via='listener' needs Firestore access (a local stack or LLMQ_FIRESTORE_PROJECT)")
        return via == "listener" or (via == "auto" and self.listen)

    async def wait(self, job_id: str, timeout: float | None = None, *, via: Via = "auto") -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._use_listener(via):
            changed = asyncio.Event()
            listener = await self._open_listener(job_id, changed)
            try:
                job = await self.get(job_id)
                while not job.done:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise WaitTimeoutError(job_id, timeout or 0)
                    await _until_changed(changed, remaining)
                    job = await self.get(job_id)
                return job
            finally:
                listener.close()
        pause = _core.POLL_MIN_SECONDS
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            hold = _core.wait_param(remaining)
            started = time.monotonic()
            job = Job.model_validate(await self.request("GET", f"/v1/jobs/{job_id}", params={"wait": hold},
                                                        timeout=hold + 30))
            if job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(job_id, timeout or 0)
            if time.monotonic() - started < min(hold, 1.0):
                await asyncio.sleep(pause)
                pause = min(pause * 2, _core.POLL_MAX_SECONDS)

    async def updates(self, job_id: str, *, timeout: float | None = None,
                      via: Via = "auto") -> AsyncIterator[Job]:
        """See Client.updates."""
        deadline = None if timeout is None else time.monotonic() + timeout
        changed: asyncio.Event | None = None
        listener: JobListener | None = None
        if self._use_listener(via):
            changed = asyncio.Event()
            listener = await self._open_listener(job_id, changed)
        try:
            last: tuple[str, str | None] | None = None
            pause = _core.POLL_MIN_SECONDS
            while True:
                job = await self.get(job_id)
                if (job.status, job.output) != last:
                    last, pause = (job.status, job.output), _core.POLL_MIN_SECONDS
                    yield job
                if job.done:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeoutError(job_id, timeout or 0)
                if changed is not None:
                    await _until_changed(changed, remaining)
                else:
                    await asyncio.sleep(pause if remaining is None else min(pause, remaining))
                    pause = min(pause * 2, _core.POLL_MAX_SECONDS)
        finally:
            if listener is not None:
                listener.close()

    async def stream(self, job_id: str, *, timeout: float | None = None, via: Via = "auto") -> AsyncIterator[str]:
        """See Client.stream."""
        sent = ""
        async for job in self.updates(job_id, timeout=timeout, via=via):
            if delta := _core.stream_delta(sent, job.output, job_id):
                sent += delta
                yield delta

    async def map(self, requests: Iterable[dict[str, Any]], *, concurrency: int = 8, key_prefix: str | None = None,
                  timeout: float | None = None, progress: bool = False,
                  total: int | None = None) -> AsyncIterator[MapResult]:
        """See Client.map: at most `concurrency` in flight, results as they complete."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        bar = MapProgress(total) if progress else None
        source = iter(enumerate(requests))
        pending: set[asyncio.Task[MapResult]] = set()
        try:
            while True:
                while len(pending) < concurrency:
                    item = next(source, None)
                    if item is None:
                        break
                    pending.add(asyncio.create_task(self._run_one(item[0], item[1], key_prefix, timeout)))
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    result = task.result()
                    if bar:
                        bar.advance(result.succeeded)
                    yield result
        finally:
            for task in pending:
                task.cancel()
            if bar:
                bar.close()

    async def _run_one(self, index: int, request: dict[str, Any], key_prefix: str | None,
                       timeout: float | None) -> MapResult:
        custom_id, key, body = _core.split_map_request(request, index, key_prefix)
        try:
            while True:
                try:
                    job = await self._submit_body(body, key)
                    break
                except RateLimitError as err:
                    await asyncio.sleep(_core.retry_delay(0, err.retry_after))  # over quota: as long as it lasts
            if not job.done:
                job = await self.wait(job.id, timeout)
            return MapResult(index=index, custom_id=custom_id, job=job)
        except LlmqError as err:
            return MapResult(index=index, custom_id=custom_id, error=err)

    async def _open_listener(self, job_id: str, changed: asyncio.Event) -> JobListener:
        """A listener that sets `changed` on this loop at every snapshot (opening it makes the Firestore
        client: blocking I/O, so in a thread)."""
        loop = asyncio.get_running_loop()
        assert self.config.firestore is not None
        return await asyncio.to_thread(JobListener, self.config.firestore, job_id,
                                       lambda _s, _o: loop.call_soon_threadsafe(changed.set))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


async def _until_changed(changed: asyncio.Event, remaining: float | None) -> None:
    """Wait for the listener's wake-up, at most until the recheck (a change it missed is read anyway)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(changed.wait(), _core.recheck_seconds(remaining))
    changed.clear()
