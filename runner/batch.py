"""`python -m runner.batch --input <gs:// or path> --output <gs:// prefix or folder> [--batch-id ID]`:
run an OpenAI-format batch file through the engine at full batching (CONTRACT §4).

- Every line is validated first; rejected lines (and later duplicates of a `custom_id`) go to
  `errors.jsonl` with their line number. Valid requests are all handed to the engine, bounded in
  flight (`LLMQ_BATCH_INFLIGHT_FACTOR` × the engine's max_concurrency), so it batches them.
- `output.jsonl` is appended and flushed as requests finish. Run again on the same output, it repairs
  a torn last line, skips the `custom_id`s already there, retries the rest and rewrites `errors.jsonl`.
- With `--batch-id`, `batches/{id}` in Firestore follows the run (status, request_counts, usage, URIs,
  timestamps; at most about one progress write per second), and a listener on it stops new requests
  when the batch is cancelled: finished lines stay, the rest become `batch_cancelled` errors. So does the
  end of its completion window (`expires_at`): the batch ends `expired`, the rest `batch_expired` errors.
  A batch with an `endpoint` (OpenAI's) rejects lines for the other one. The output and error files are
  registered as files of the Files API (`output_file_id`, `error_file_id`) before the batch is final.
- In a Cloud Run job with several tasks (CLOUD_RUN_TASK_INDEX/COUNT), task i takes the lines with
  (line - 1) % count == i and writes `parts/` of its own; the task that finds every part done merges
  them into output.jsonl and errors.jsonl (a merge is deterministic, so two doing it is harmless).

Exit status: 0 when the batch ended completed or cancelled, or failed with the reason recorded in
`batches/{id}` (a permanent input problem: retrying the task would not help); 1 when it failed with
no document to record it; 3 on a transient fault (engine dead, store down): a retried task resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from jobs import batches, tracing
from jobs.adapters.batch_files import BatchFiles, Location, OutputLog
from jobs.adapters.batch_store import ThrottledProgress
from jobs.announce import announce_batch
from jobs.batch_state import BatchStatus
from jobs.batches import (
    BatchLine,
    BatchRecord,
    BatchStore,
    ErrorCode,
    LineError,
    RequestCounts,
    TaskCounts,
    dumps_line,
    error_line,
    output_line,
    parse_lines,
    task_share,
)
from jobs.engine import (
    Engine,
    EngineDead,
    EngineError,
    FinishReason,
    GenerationUpdate,
    PromptTooLong,
    RequestRejected,
)
from jobs.errors import DependencyUnavailable
from jobs.files import FileStore, output_file
from jobs.models import Usage
from jobs.service import utcnow
from jobs.webhooks import Announcer
from runner.batch_settings import BatchSettings

log = logging.getLogger("runner.batch")
T = TypeVar("T")


@dataclass
class BatchPlan:
    """What one task runs: its share of the valid lines and of the rejected ones."""

    lines: list[BatchLine]
    errors: list[LineError]
    total: int  # non-blank lines in the whole file (all tasks)
    valid_total: int  # valid lines in the whole file


def plan_batch(path: Path, *, model: str, aliases: dict[str, str] | None = None, endpoint: str | None = None,
               task_index: int = 0, task_count: int = 1) -> BatchPlan:
    """Parse the whole file (duplicates are a whole-file notion) and keep this task's share. A line may name
    the model by its id or by one of its `aliases`; with an `endpoint`, its url must be that one."""
    plan = BatchPlan([], [], 0, 0)
    names = {None, model} | {alias for alias, target in (aliases or {}).items() if target == model}
    with open(path, "rb") as f:
        for parsed in parse_lines(f):
            plan.total += 1
            if isinstance(parsed, BatchLine) and endpoint is not None and parsed.url != endpoint:
                parsed = LineError(parsed.line, parsed.custom_id, ErrorCode.URL_ENDPOINT_MISMATCH,
                                   f"url {parsed.url} is not this batch's endpoint, {endpoint}")
            if isinstance(parsed, BatchLine) and parsed.request.model not in names:
                parsed = LineError(parsed.line, parsed.custom_id, ErrorCode.MODEL_NOT_FOUND,
                                   f"model {parsed.request.model!r} is not served by this batch runner; use {model!r}")
            mine = task_share(parsed.line, task_index=task_index, task_count=task_count)
            if isinstance(parsed, BatchLine):
                plan.valid_total += 1
                if mine:
                    plan.lines.append(parsed)
            elif mine:
                plan.errors.append(parsed)
    return plan


@dataclass
class BatchOutcome:
    status: BatchStatus
    counts: RequestCounts
    seconds: float = 0.0  # time spent running requests (model load excluded)
    completion_tokens: int = 0
    error: str | None = None
    recorded: bool = False  # the outcome is in batches/{id}


@dataclass
class _Progress:
    completed: int = 0
    failed: list[LineError] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BatchRunner:
    def __init__(self, *, settings: BatchSettings, engine: Callable[[], Awaitable[Engine]], files: BatchFiles,
                 store: BatchStore | None, input_uri: str, output_prefix: str, batch_id: str | None,
                 file_store: FileStore | None = None, announcer: Announcer | None = None,
                 progress_bar: bool = False, clock: Callable[[], datetime] = utcnow) -> None:
        self._settings = settings
        # The engine is loaded only once the input is known to hold work: an unusable file, or a rerun
        # with nothing left to do, never loads the model.
        self._load_engine = engine
        self._engine: Engine | None = None
        self._files = files
        self._store = store if batch_id else None
        self._file_store = file_store if batch_id else None
        self._announcer = announcer
        self._record: BatchRecord | None = None  # as it was when the run began
        self._input = Location.parse(input_uri)
        self._output = Location.parse(output_prefix)
        self._batch_id = batch_id
        self._key = batch_id or self._input.uri  # makes output line ids deterministic per batch
        self._progress_bar = progress_bar
        self._clock = clock
        self._cancel = asyncio.Event()  # no new requests start: a cancel, or the window's end
        self._expired = False
        self._state = _Progress()
        self._bar: Any = None
        i, n = settings.task_index, settings.task_count
        self._parts = self._output.child("parts")
        self._output_file = self._output.child("output.jsonl")
        self._error_file = self._output.child("errors.jsonl")
        if n > 1:
            self._my_output = self._parts.child(f"output-{i:05d}-of-{n:05d}.jsonl")
            self._my_errors = self._parts.child(f"errors-{i:05d}-of-{n:05d}.jsonl")
        else:
            self._my_output, self._my_errors = self._output_file, self._error_file

    # ------------------------------------------------------------------ the run

    async def run(self) -> BatchOutcome:
        record = self._record = await self._begin()
        if record is not None and record.status in (BatchStatus.CANCELLED, BatchStatus.EXPIRED):
            log.info("batch %s is %s; nothing to do", self._batch_id, record.status.value)
            return BatchOutcome(record.status, record.request_counts, recorded=True)
        if record is not None and record.status is BatchStatus.CANCELLING:
            self._cancel.set()
        elif record is not None and record.expires_at is not None and record.expires_at <= self._clock():
            self._expired = True  # started after its window (a launch that waited): nothing starts
            self._cancel.set()
        try:
            path = await asyncio.to_thread(self._files.local_copy, self._input)
        except FileNotFoundError:
            return await self._fail_input("input_not_found", f"the input file {self._input.uri} does not exist")
        plan = await asyncio.to_thread(plan_batch, path, model=self._settings.model_name,
                                       aliases=self._settings.model_aliases,
                                       endpoint=record.endpoint if record is not None else None,
                                       task_index=self._settings.task_index, task_count=self._settings.task_count)
        if plan.valid_total == 0:
            await asyncio.to_thread(self._write_errors, plan.errors)
            if not await asyncio.to_thread(self._files.exists, self._my_output):
                await asyncio.to_thread(self._files.write_bytes, self._my_output, b"")
            await self._finish_part()
            reason = "the input file is empty" if plan.total == 0 else "no line of the input file is a valid request"
            return await self._fail_input("invalid_input_file", f"{reason}; see {self._error_file.uri}",
                                          counts=RequestCounts(total=plan.total, failed=len(plan.errors)))

        output = await asyncio.to_thread(self._files.open_log, self._my_output,
                                         checkpoint_seconds=self._settings.batch_checkpoint_seconds)
        try:
            done = _done_lines(output)
            todo = [item for item in plan.lines if item.custom_id not in done]
            self._state.completed = len(plan.lines) - len(todo)
            for item in plan.lines:  # the tokens of what an earlier run did count in this batch's usage
                if (tokens := done.get(item.custom_id)) is not None:
                    self._state.prompt_tokens += tokens[0]
                    self._state.completion_tokens += tokens[1]
            self._state.failed = list(plan.errors)
            log.info("batch %s task %d/%d: %d lines, %d rejected, %d already done, %d to run%s",
                     self._key, self._settings.task_index, self._settings.task_count, plan.total, len(plan.errors),
                     self._state.completed, len(todo), f" (repaired {output.repaired_bytes} torn bytes)"
                     if output.repaired_bytes else "")
            if todo and not self._cancel.is_set():
                self._engine = await self._load_engine()
            await self._start_requests(plan.total)
            started = time.monotonic()
            unstarted = await self._run_all(todo, output, plan.total) if self._engine is not None else todo
            seconds = time.monotonic() - started
            expired = self._expired and not await asyncio.to_thread(self._cancelled_by_caller)
            cancelled = self._cancel.is_set() and not expired
            code, why = ((ErrorCode.BATCH_EXPIRED, "the batch expired") if expired else
                         (ErrorCode.BATCH_CANCELLED, "the batch was cancelled"))
            self._state.failed.extend(LineError(item.line, item.custom_id, code, f"{why} before this request started")
                                      for item in unstarted)
            if self._settings.task_count == 1 and self._store is not None and self._batch_id is not None:
                now = self._clock()  # with parts, the task that merges them finalizes
                await asyncio.to_thread(self._store.update, self._batch_id,
                                        lambda r: batches.begin_finalizing(r, now=now))
            await asyncio.to_thread(output.checkpoint)
        finally:
            output.close()
        await asyncio.to_thread(self._write_errors, self._state.failed)
        status = await self._finish(plan.total, cancelled, expired)
        counts = RequestCounts(total=plan.total, completed=self._state.completed, failed=len(self._state.failed))
        log.info("batch %s task %d ended %s: %d completed, %d failed of %d in %.1f s", self._key,
                 self._settings.task_index, status.value, counts.completed, counts.failed, plan.total, seconds)
        return BatchOutcome(status, counts, seconds, self._state.completion_tokens, recorded=self._store is not None)

    async def _run_all(self, todo: list[BatchLine], output: OutputLog, total: int) -> list[BatchLine]:
        """Run `todo` with a bounded number in flight; returns the lines never started (cancelled)."""
        assert self._engine is not None
        limit = max(1, int(self._settings.batch_inflight_factor * self._engine.info.max_concurrency))
        slots = asyncio.Semaphore(limit)
        unwatch = await self._watch_cancel()
        ticker = asyncio.create_task(self._tick(output, total))
        window = asyncio.create_task(self._expire_at_window_end())
        self._open_bar(total=len(todo) + self._state.completed, initial=self._state.completed)
        next_index = 0
        try:
            async with asyncio.TaskGroup() as group:
                for next_index, item in enumerate(todo):
                    await slots.acquire()
                    if self._cancel.is_set():
                        slots.release()
                        break
                    task = group.create_task(self._one(item, output))
                    task.add_done_callback(lambda _t: slots.release())
                else:
                    next_index = len(todo)
        except BaseExceptionGroup as group:  # the first failure (EngineDead, a full disk) ends the run
            raise group.exceptions[0] from None
        finally:
            ticker.cancel()
            window.cancel()
            await asyncio.gather(ticker, window, return_exceptions=True)
            if unwatch is not None:
                await asyncio.to_thread(unwatch)
            if self._bar is not None:
                self._bar.close()
        return todo[next_index:]

    async def _one(self, item: BatchLine, output: OutputLog) -> None:
        attempts, engine = self._settings.batch_request_attempts, self._engine
        assert engine is not None
        for attempt in range(1, attempts + 1):
            request = item.request.to_generation(f"{self._key}:{item.line}:{attempt}")
            try:
                last: GenerationUpdate | None = None
                async for update in engine.generate(request):
                    last = update
                if last is None or last.finish_reason in (None, FinishReason.ABORT):
                    raise EngineError("the generation ended without a result")
            except PromptTooLong as err:
                return self._failed(item, ErrorCode.CONTEXT_LENGTH_EXCEEDED, str(err))
            except RequestRejected as err:  # the engine's own validation: permanent for this request
                return self._failed(item, ErrorCode.INVALID_BODY, str(err)[:500])
            except EngineDead:
                raise
            except EngineError as err:  # transient: try again, then give up on this request only
                if attempt == attempts:
                    return self._failed(item, ErrorCode.ENGINE_ERROR, f"failed {attempts} times: {err}"[:500])
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
                continue
            usage = Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                          total_tokens=last.prompt_tokens + last.completion_tokens)
            line = output_line(item, batch_key=self._key, model=engine.info.model, created=self._clock(),
                               text=last.text, finish_reason=last.finish_reason.value, usage=usage)
            output.append(dumps_line(line))
            self._state.completed += 1
            self._state.prompt_tokens += last.prompt_tokens
            self._state.completion_tokens += last.completion_tokens
            if self._bar is not None:
                self._bar.update(1)
            return None

    def _failed(self, item: BatchLine, code: ErrorCode, message: str) -> None:
        self._state.failed.append(LineError(item.line, item.custom_id, code, message))
        if self._bar is not None:
            self._bar.update(1)

    # ------------------------------------------------------------------ progress, cancel, files

    async def _tick(self, output: OutputLog, total: int) -> None:
        """Progress writes (throttled) and output checkpoints, off the request path."""
        interval = self._settings.batch_progress_interval_seconds * self._settings.task_count
        progress = ThrottledProgress(lambda counts: self._write_counts(counts, total), interval=interval)
        while True:
            await asyncio.sleep(interval)
            if self._store is not None:
                await asyncio.to_thread(progress.offer, self._counts(total))
            if output.checkpoint_due():
                try:
                    await asyncio.to_thread(output.checkpoint)
                except DependencyUnavailable as err:
                    log.warning("output checkpoint failed; will retry: %s", err)

    def _counts(self, total: int) -> TaskCounts:
        return TaskCounts(total=total, completed=self._state.completed, failed=len(self._state.failed),
                          prompt_tokens=self._state.prompt_tokens, completion_tokens=self._state.completion_tokens)

    def _write_counts(self, counts: TaskCounts, total: int) -> None:
        assert self._store is not None and self._batch_id is not None
        now = self._clock()
        self._store.update(self._batch_id, lambda r: batches.with_task_counts(
            r, task_index=self._settings.task_index, counts=counts, total=total, now=now))

    async def _watch_cancel(self) -> Callable[[], None] | None:
        if self._store is None or self._batch_id is None:
            return None
        loop = asyncio.get_running_loop()

        def on_change(record: BatchRecord) -> None:
            if record.status.stops_new_requests and not self._cancel.is_set():
                log.info("batch %s is being cancelled: no new requests start", self._batch_id)
                loop.call_soon_threadsafe(self._cancel.set)

        return await asyncio.to_thread(self._store.watch, self._batch_id, on_change)

    async def _expire_at_window_end(self) -> None:
        """At the batch's expires_at, stop starting requests (those running finish): the batch ends expired."""
        expires_at = self._record.expires_at if self._record is not None else None
        if expires_at is None:
            return
        await asyncio.sleep(max(0.0, (expires_at - self._clock()).total_seconds()))
        log.info("batch %s reached the end of its completion window: no new requests start", self._batch_id)
        self._expired = True
        self._cancel.set()

    def _cancelled_by_caller(self) -> bool:
        """Whether a cancel (not the window's end) stopped the batch: a cancel wins over an expiry."""
        if self._store is None or self._batch_id is None:
            return False
        record = self._store.get(self._batch_id)
        return record is not None and record.status.stops_new_requests

    def _open_bar(self, *, total: int, initial: int) -> None:
        if self._progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="req", desc=self._key[:24], file=sys.stderr,
                             dynamic_ncols=True)

    def _write_errors(self, errors: list[LineError]) -> None:
        body = "".join(dumps_line(error_line(e, batch_key=self._key)) for e in sorted(errors, key=lambda e: e.line))
        self._files.write_bytes(self._my_errors, body.encode())

    async def _finish_part(self) -> bool:
        """Mark this task's part done; True if this task should produce the final files (it is the
        only task, or every part is done and it merged them)."""
        n = self._settings.task_count
        if n == 1:
            return True
        i = self._settings.task_index
        await asyncio.to_thread(self._files.write_bytes, self._parts.child(f"done-{i:05d}-of-{n:05d}"), b"")
        markers = [self._parts.child(f"done-{k:05d}-of-{n:05d}") for k in range(n)]
        if not all([await asyncio.to_thread(self._files.exists, m) for m in markers]):
            return False
        if self._store is not None and self._batch_id is not None:
            now = self._clock()
            await asyncio.to_thread(self._store.update, self._batch_id,
                                    lambda r: batches.begin_finalizing(r, now=now))
        await asyncio.to_thread(self._merge, n)
        return True

    def _merge(self, n: int) -> None:
        for kind, target in (("output", self._output_file), ("errors", self._error_file)):
            parts = [self._files.read_bytes(self._parts.child(f"{kind}-{k:05d}-of-{n:05d}.jsonl")) or b""
                     for k in range(n)]
            lines = [line for part in parts for line in part.splitlines(keepends=True) if line.endswith(b"\n")]
            if kind == "errors":
                lines.sort(key=lambda raw: json.loads(raw)["error"]["line"])
            self._files.write_bytes(target, b"".join(lines))

    # ------------------------------------------------------------------ batches/{id}

    async def _begin(self) -> BatchRecord | None:
        if self._store is None or self._batch_id is None:
            return None
        now = self._clock()
        fresh = BatchRecord.new(batch_id=self._batch_id, input_uri=self._input.uri, output_prefix=self._output.uri,
                                now=now, ttl_seconds=self._settings.batch_ttl_seconds)
        if await asyncio.to_thread(self._store.create, fresh):
            return fresh
        record = await asyncio.to_thread(self._store.get, self._batch_id)
        if record is not None:  # a rerun resumes a failed or completed batch (batches.resume decides)
            resumed, _ = await asyncio.to_thread(self._store.update, self._batch_id,
                                                 lambda r: batches.resume(r, now=now))
            record = resumed or record
        return record

    async def _start_requests(self, total: int) -> None:
        if self._store is None or self._batch_id is None:
            return
        now, counts = self._clock(), self._counts(total)
        await asyncio.to_thread(self._store.update, self._batch_id, lambda r: batches.start_requests(
            r, task_index=self._settings.task_index, counts=counts, total=total, now=now, **self._uris()))

    def _uris(self) -> dict[str, str]:
        return {"input_uri": self._input.uri, "output_uri": self._output_file.uri,
                "error_uri": self._error_file.uri, "model": self._settings.model_name}

    async def _finish(self, total: int, cancelled: bool, expired: bool) -> BatchStatus:
        final_files = await self._finish_part()
        outcome = (BatchStatus.CANCELLED if cancelled else BatchStatus.EXPIRED if expired
                   else BatchStatus.COMPLETED)
        if self._store is None or self._batch_id is None:
            return outcome
        file_ids = await asyncio.to_thread(self._register_files) if final_files else {}
        now, counts = self._clock(), self._counts(total)

        def mutate(record: BatchRecord) -> BatchRecord:
            return batches.finish_requests(record, task_index=self._settings.task_index, counts=counts, total=total,
                                           now=now, final_files=final_files, cancelled=cancelled, expired=expired,
                                           file_ids=file_ids)

        record, _ = await asyncio.to_thread(self._store.update, self._batch_id, mutate)
        await self._announce(record)
        return record.status if record is not None and final_files else outcome

    async def _announce(self, record: BatchRecord | None) -> None:
        """The webhook event of a batch this run ended (if it did); not announced, the reconciler will."""
        if self._store is not None and record is not None and record.pending_event is not None:
            await asyncio.to_thread(announce_batch, self._announcer, self._store, record)

    def _register_files(self) -> dict[str, str | None]:
        """Record the final output and error files as files of the batch's tenant (derived ids: a rerun
        registers the same ones); an empty one is none, as OpenAI answers. Returns the batch's file ids."""
        if self._file_store is None or self._record is None or self._batch_id is None:
            return {}
        ids: dict[str, str | None] = {}
        kinds: tuple[tuple[Literal["output", "errors"], Location], ...] = (
            ("output", self._output_file), ("errors", self._error_file))
        for kind, location in kinds:
            size = self._files.size(location)
            file_id = None
            if size:
                record = output_file(batch_id=self._batch_id, kind=kind, tenant=self._record.tenant,
                                           uri=location.uri, size=size, created_at=self._clock(),
                                           expire_at=self._record.expire_at or self._clock() + timedelta(
                                               seconds=self._settings.batch_ttl_seconds))
                self._file_store.put(record)  # a rerun that added lines replaces it
                file_id = record.id
            ids["output_file_id" if kind == "output" else "error_file_id"] = file_id
        return ids

    async def _fail_input(self, code: str, message: str, counts: RequestCounts | None = None) -> BatchOutcome:
        log.error("batch %s failed: %s", self._key, message)
        counts = counts or RequestCounts()
        if self._store is None or self._batch_id is None:
            return BatchOutcome(BatchStatus.FAILED, counts, error=message)
        now = self._clock()
        record, _ = await asyncio.to_thread(self._store.update, self._batch_id, lambda r: batches.fail_input(
            r, code=code, message=message, counts=counts, now=now, output_uri=self._output_file.uri,
            error_uri=self._error_file.uri))
        await self._announce(record)
        return BatchOutcome(BatchStatus.FAILED, counts, error=message, recorded=True)


def _done_lines(output: OutputLog) -> dict[str, tuple[int, int]]:
    """The custom_ids already in the output, each with its (prompt, completion) tokens."""
    done: dict[str, tuple[int, int]] = {}
    for raw in output.lines():
        try:
            line = json.loads(raw)
            custom_id = line.get("custom_id")
            usage = (line.get("response") or {}).get("body", {}).get("usage") or {}
            tokens = (int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError):
            continue  # not ours to judge: a rerun never rewrites what is there
        if isinstance(custom_id, str):
            done[custom_id] = tokens
    return done


# ---------------------------------------------------------------------- the command


async def run_batch(settings: BatchSettings, *, input_uri: str, output_prefix: str, batch_id: str | None = None,
                    engine: Engine | None = None, progress_bar: bool = False,
                    traceparent: str | None = None) -> BatchOutcome:
    """Run one batch (this task's share). Builds the engine when there is work for it (and shuts it down
    again) unless one is given. `traceparent` (W3C) puts its span in the trace of the request that launched it."""
    from jobs.adapters.clients import firestore_client, storage_client

    uses_gcs = input_uri.startswith("gs://") or output_prefix.startswith("gs://")
    files = BatchFiles(storage_client(settings.project) if uses_gcs else None,
                       work_dir=Path(settings.batch_work_dir) if settings.batch_work_dir else None)
    store, file_store, announcer = None, None, None
    if batch_id is not None:
        from jobs.adapters.batch_store import FirestoreBatchStore
        from jobs.adapters.file_store import FirestoreFileStore

        store = FirestoreBatchStore(firestore_client(settings.project, settings.database))
        file_store = FirestoreFileStore(firestore_client(settings.project, settings.database))
        if settings.webhook_topic:
            from jobs.adapters.clients import publisher_client
            from jobs.adapters.webhook_store import FirestoreEndpointStore, PubSubDeliveryQueue

            announcer = Announcer(
                endpoints=FirestoreEndpointStore(firestore_client(settings.project, settings.database)),
                queue=PubSubDeliveryQueue(publisher_client(), project=settings.project, topic=settings.webhook_topic),
                clock=utcnow)
    started: list[Engine] = []

    async def get_engine() -> Engine:
        if engine is not None:
            return engine
        if not started:
            from runner.engines import start_engine

            started.append(await start_engine(settings))
        return started[0]

    try:
        runner = BatchRunner(settings=settings, engine=get_engine, files=files, store=store, file_store=file_store,
                             announcer=announcer, input_uri=input_uri, output_prefix=output_prefix,
                             batch_id=batch_id, progress_bar=progress_bar)
        # One span per file (this task's share of it), with its line counts: a batch's lines are not spans
        # of their own, or a 50 000-line file would make a trace no viewer can draw.
        parent = tracing.extract({"traceparent": traceparent} if traceparent else {})
        with tracing.tracer().start_as_current_span("batch", context=parent, attributes={
                tracing.BATCH_ID: batch_id or "", "llmq.input_uri": input_uri,
                "llmq.task_index": settings.task_index, "llmq.task_count": settings.task_count}) as span:
            outcome = await runner.run()
            span.set_attributes({"llmq.lines.total": outcome.counts.total,
                                 "llmq.lines.completed": outcome.counts.completed,
                                 "llmq.lines.failed": outcome.counts.failed})
            tracing.record_outcome(span, outcome.status.value)
            return outcome
    finally:
        for own in started:
            await own.shutdown()


def main(argv: list[str] | None = None) -> int:
    from jobs.batches import is_batch_id
    from jobs.logs import configure_logging
    from runner.batch_settings import batch_settings

    parser = argparse.ArgumentParser(prog="python -m runner.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="the batch file: gs://bucket/name or a local path")
    parser.add_argument("--output", required=True, help="where output.jsonl and errors.jsonl go: gs:// prefix or folder")
    parser.add_argument("--batch-id", default=None, help="keep Firestore batches/{id} current (created if missing)")
    parser.add_argument("--traceparent", default=None, help="the W3C trace context of the request that launched it")
    args = parser.parse_args(argv)
    if args.batch_id is not None and not is_batch_id(args.batch_id):
        parser.error("--batch-id must look like batch_<letters, digits, - or _>")
    configure_logging()
    settings = batch_settings()
    tracing.configure_tracing("batch", exporter=settings.trace_exporter, directory=settings.trace_dir,
                              project=settings.project)
    try:
        outcome = asyncio.run(run_batch(settings, input_uri=args.input, output_prefix=args.output,
                                        batch_id=args.batch_id, progress_bar=sys.stderr.isatty(),
                                        traceparent=args.traceparent))
    except (EngineDead, DependencyUnavailable) as err:
        log.error("batch stopped by a transient fault; run it again to resume: %s", err)
        return 3
    if outcome.status is BatchStatus.FAILED and not outcome.recorded:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
