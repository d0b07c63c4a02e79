"""The synchronous client: `Client(base_url, api_key)` (or from LLMQ_BASE_URL / LLMQ_API_KEY, or a local
stack's stack.json). Its twin with the same surface is llmq.aio.AsyncClient."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from types import TracebackType
from typing import Any, Literal, Self

import httpx

from llmq import _core
from llmq._listen import JobListener
from llmq.batches import Batches
from llmq.config import Config, resolve
from llmq.errors import APIConnectionError, ConfigurationError, LlmqError, RateLimitError, WaitTimeoutError
from llmq.progress import MapProgress
from llmq.types import FINAL_JOB_STATUSES, Job, MapResult, Model

log = logging.getLogger("llmq")

Via = Literal["auto", "listener", "poll"]


class Client:
    """Submit jobs, read, wait for, stream and cancel them, run many at once, and run batches.

    `listen`: wait and stream through a Firestore listener (True), by HTTP (False), or through a listener
    when the configuration gives Firestore access (None: a local stack's stack.json, or LLMQ_FIRESTORE_PROJECT).
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, stack_json: str | None = None,
                 firestore_project: str | None = None, listen: bool | None = None, timeout: float = 30.0,
                 max_retries: int = 4) -> None:
        self.config: Config = resolve(base_url, api_key, stack_json=stack_json, firestore_project=firestore_project)
        if listen and self.config.firestore is None:
            raise ConfigurationError("listen=True needs Firestore access (a local stack or LLMQ_FIRESTORE_PROJECT)")
        self.listen = self.config.firestore is not None if listen is None else listen
        self.max_retries = max_retries
        self._http = httpx.Client(base_url=self.config.base_url, timeout=timeout, headers=_core.headers(self.config.api_key))
        self.batches = Batches(self)

    # -- the request core -------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None, content: bytes | None = None,
                files: dict[str, Any] | None = None, data: dict[str, str] | None = None,
                retries: int | None = None) -> Any:
        """One API call, retried on 429/502/503 and connection errors (after Retry-After, else backoff).
        Returns the parsed JSON body; raises the error family's exception (llmq.errors)."""
        retries = self.max_retries if retries is None else retries
        attempt = 0
        while True:
            try:
                try:
                    response = self._http.request(method, path, json=json, params=params, headers=headers,
                                                  content=content, files=files, data=data,
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
                time.sleep(delay)
                attempt += 1

    # -- jobs -------------------------------------------------------------------------------------------

    def submit(self, prompt: str | None = None, *, messages: list[dict[str, Any]] | None = None,
               model: str | None = None, max_tokens: int | None = None, priority: str | None = None,
               stream: bool | None = None, metadata: dict[str, str] | None = None,
               deadline_seconds: float | None = None, idempotency_key: str | None = None, **params: Any) -> Job:
        """Create a job (POST /v1/jobs) and return it, `queued`. Exactly one of `prompt` and `messages`; any
        other request field (`temperature`, `seed`, `stop`, `ttl_seconds`...) as a keyword. Every call carries
        an Idempotency-Key (the one given, else a fresh one), so retries never create a second job."""
        body = _core.job_body(prompt, messages, {"model": model, "max_tokens": max_tokens, "priority": priority,
                                                 "stream": stream, "metadata": metadata,
                                                 "deadline_seconds": deadline_seconds, **params})
        return self._submit_body(body, idempotency_key or _core.new_idempotency_key())

    def _submit_body(self, body: dict[str, Any], key: str) -> Job:
        job = Job.model_validate(self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}))
        log.info("submitted", extra={"job_id": job.id})
        return job

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self.request("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a finished job is returned unchanged."""
        return Job.model_validate(self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def models(self) -> list[Model]:
        return [Model.model_validate(m) for m in self.request("GET", "/v1/models")["data"]]

    def wait(self, job_id: str, timeout: float | None = None, *, via: Via = "auto") -> Job:
        """The job once it is final (succeeded, failed or cancelled: check `job.status`). Through a Firestore
        listener when the client can read the database (`via="listener"` insists on it), otherwise `?wait`
        long-polls. Raises WaitTimeoutError if it is not final within `timeout` seconds (None: no limit)."""
        if self._use_listener(via):
            return self._wait_listening(job_id, timeout)
        return self._wait_polling(job_id, timeout)

    def _use_listener(self, via: Via) -> bool:
        if via == "listener" and self.config.firestore is None:
            raise ConfigurationError("via='listener' needs Firestore access (a local stack or LLMQ_FIRESTORE_PROJECT)")
        return via == "listener" or (via == "auto" and self.listen)

    def _wait_polling(self, job_id: str, timeout: float | None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _core.POLL_MIN_SECONDS
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            hold = _core.wait_param(remaining)
            started = time.monotonic()
            job = Job.model_validate(self.request("GET", f"/v1/jobs/{job_id}", params={"wait": hold},
                                                  timeout=hold + 30))
            if job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(job_id, timeout or 0)
            if time.monotonic() - started < min(hold, 1.0):
                # The server answered early without a final state: back off rather than spin.
                time.sleep(pause)
                pause = min(pause * 2, _core.POLL_MAX_SECONDS)

    def _wait_listening(self, job_id: str, timeout: float | None) -> Job:
        final = threading.Event()

        def on_state(status: str, _output: str | None) -> None:
            if status in FINAL_JOB_STATUSES:
                final.set()

        deadline = None if timeout is None else time.monotonic() + timeout
        assert self.config.firestore is not None
        listener = JobListener(self.config.firestore, job_id, on_state)
        try:
            job = self.get(job_id)  # the job exists and is this tenant's (404 otherwise), and may be final
            while not job.done:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeoutError(job_id, timeout or 0)
                final.wait(_core.recheck_seconds(remaining))
                job = self.get(job_id)  # the view over HTTP, once final (or as the recheck)
            return job
        finally:
            listener.close()

    def updates(self, job_id: str, *, timeout: float | None = None, via: Via = "auto") -> Iterator[Job]:
        """Yield the job's view now and each time its status or output changes, ending with its final view.
        A Firestore listener says when to read it again where the client can read the database (`via`, as for
        wait()); otherwise it is polled with backoff. Raises WaitTimeoutError past `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        changed: threading.Event | None = None
        listener: JobListener | None = None
        if self._use_listener(via):
            assert self.config.firestore is not None
            changed = threading.Event()
            listener = JobListener(self.config.firestore, job_id, lambda _s, _o: changed.set())
        try:
            last: tuple[str, str | None] | None = None
            pause = _core.POLL_MIN_SECONDS
            while True:
                job = self.get(job_id)
                if (job.status, job.output) != last:
                    last, pause = (job.status, job.output), _core.POLL_MIN_SECONDS
                    yield job
                if job.done:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeoutError(job_id, timeout or 0)
                if changed is not None:
                    # The listener wakes us on a change; the recheck covers a change it missed.
                    changed.wait(_core.recheck_seconds(remaining))
                    changed.clear()
                else:
                    time.sleep(pause if remaining is None else min(pause, remaining))
                    pause = min(pause * 2, _core.POLL_MAX_SECONDS)
        finally:
            if listener is not None:
                listener.close()

    def stream(self, job_id: str, *, timeout: float | None = None, via: Via = "auto") -> Iterator[str]:
        """Yield the job's text as it grows (deltas), until it is final. A job submitted with `stream=True`
        grows about once a second; any other yields its whole output at the end. Check get() for how it
        ended. Raises WaitTimeoutError past `timeout`, StreamDivergedError if the output restarted."""
        sent = ""
        for job in self.updates(job_id, timeout=timeout, via=via):
            if delta := _core.stream_delta(sent, job.output, job_id):
                sent += delta
                yield delta

    # -- many jobs --------------------------------------------------------------------------------------

    def map(self, requests: Iterable[dict[str, Any]], *, concurrency: int = 8, key_prefix: str | None = None,
            timeout: float | None = None, progress: bool = False, total: int | None = None) -> Iterator[MapResult]:
        """Run many requests, at most `concurrency` in flight, and yield each result as it completes (not in
        input order: `MapResult.index` says which). Each request is a job body, plus optionally `custom_id`
        and `idempotency_key`. With `key_prefix`, every request gets a deterministic idempotency key (from the
        prefix, its custom_id or index, and its body), so a rerun after a crash attaches to the jobs already
        submitted instead of submitting them again. A 429 (over quota) is retried after its Retry-After for as long
        as it lasts, so the quota paces the run. A request that
        fails to submit or to finish is yielded with `error` set; map() itself goes on."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        bar = MapProgress(total) if progress else None
        pending: dict[Future[MapResult], int] = {}
        source = iter(enumerate(requests))
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llmq-map")
        try:
            while True:
                while len(pending) < concurrency:
                    item = next(source, None)
                    if item is None:
                        break
                    pending[pool.submit(self._run_one, item[0], item[1], key_prefix, timeout)] = item[0]
                if not pending:
                    return
                done, _ = wait_futures(list(pending), return_when=FIRST_COMPLETED)
                for future in done:
                    del pending[future]
                    result = future.result()
                    if bar:
                        bar.advance(result.succeeded)
                    yield result
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if bar:
                bar.close()

    def _run_one(self, index: int, request: dict[str, Any], key_prefix: str | None,
                 timeout: float | None) -> MapResult:
        custom_id, key, body = _core.split_map_request(request, index, key_prefix)
        try:
            while True:
                try:
                    job = self._submit_body(body, key)
                    break
                except RateLimitError as err:
                    # Over quota (submissions per minute, or queued jobs): wait as told for as long as it lasts;
                    # the request's own retries have already been used.
                    time.sleep(_core.retry_delay(0, err.retry_after))
            if not job.done:
                job = self.wait(job.id, timeout)
            return MapResult(index=index, custom_id=custom_id, job=job)
        except LlmqError as err:
            return MapResult(index=index, custom_id=custom_id, error=err)

    # -- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
