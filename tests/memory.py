"""In-memory implementations of the ports, for the fast tier (no emulators, no JVM, no model).

They keep the ports' contracts where the fast tests depend on them — create refuses an existing id, update
applies a pure mutation atomically, a cancelled job held by an instance reaches that instance's listener,
wait_until_final wakes on a change — and nothing else: the emulator suite checks the real adapters."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobs.adapters.wiring import ApiPorts
from jobs.auth import ApiKey
from jobs.batches import BatchRecord
from jobs.engine import (
    EngineInfo,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GenerationUpdate,
    PromptTooLong,
)
from jobs.errors import NotFound, PayloadTooLarge
from jobs.files import FilePage, FileRecord
from jobs.models import JobMessage, JobRecord
from jobs.ports import Mutation, watch_states
from jobs.state import JobStatus
from jobs.webhooks import DeliveryMessage, WebhookEndpoint


class InMemoryJobStore:
    def __init__(self) -> None:
        self.records: dict[str, JobRecord] = {}
        self.messages: dict[str, JobMessage] = {}
        self._changed = threading.Condition()
        self._cancel_listeners: list[tuple[str, Callable[[str, str], None]]] = []
        self.waiting = threading.Event()  # set once a wait_until_final is waiting

    def create(self, record: JobRecord, message: JobMessage) -> bool:
        with self._changed:
            if record.id in self.records:
                return False
            self.records[record.id], self.messages[record.id] = record, message
            self._changed.notify_all()
            return True

    def get(self, job_id: str) -> JobRecord | None:
        with self._changed:
            return self.records.get(job_id)

    def delete(self, job_id: str) -> None:
        with self._changed:
            self.records.pop(job_id, None)
            self.messages.pop(job_id, None)

    def update(self, job_id: str, mutate: Mutation) -> tuple[JobRecord | None, bool]:
        with self._changed:
            current = self.records.get(job_id)
            if current is None:
                return None, False
            new = mutate(current)
            if new is None or new == current:
                return current, False
            self.records[job_id] = new
            self._changed.notify_all()
            listeners = list(self._cancel_listeners)
        if new.status is JobStatus.CANCELLED and current.status is not JobStatus.CANCELLED and new.lease_owner:
            for instance, on_cancelled in listeners:
                if new.runner_instance == instance:
                    on_cancelled(job_id, new.lease_owner)
        return new, True

    def wait_until_final(self, job_id: str, timeout: float) -> JobRecord | None:
        with self._changed:
            self.waiting.set()
            self._changed.wait_for(lambda: self._final(job_id), timeout=timeout)
            return self.records.get(job_id)

    def watch(self, job_id: str, *, timeout: float, idle: float) -> Generator[JobRecord | None, None, None]:
        def next_state(last: JobRecord | None, wait: float) -> JobRecord | None:
            with self._changed:
                self.waiting.set()
                self._changed.wait_for(lambda: self.records.get(job_id) not in (None, last), timeout=wait)
                return self.records.get(job_id)

        yield from watch_states(next_state, timeout=timeout, idle=idle)

    def _final(self, job_id: str) -> bool:
        record = self.records.get(job_id)
        return record is not None and record.status.is_final

    def get_message(self, job_id: str) -> JobMessage | None:
        with self._changed:
            return self.messages.get(job_id)

    def watch_cancelled(self, instance: str, on_cancelled: Callable[[str, str], None]) -> Callable[[], None]:
        entry = (instance, on_cancelled)
        with self._changed:
            self._cancel_listeners.append(entry)
        return lambda: self._cancel_listeners.remove(entry)

    def find_stale(self, *, queued_before: datetime, lease_expired_before: datetime, limit: int) -> list[JobRecord]:
        with self._changed:
            queued = [r for r in self.records.values() if r.status is JobStatus.QUEUED and r.created_at < queued_before]
            running = [r for r in self.records.values() if r.status is JobStatus.RUNNING
                       and r.lease_expires_at is not None and r.lease_expires_at < lease_expired_before]
        return queued[:limit] + running[:limit]

    def find_unannounced(self, *, ended_before: datetime, limit: int) -> list[JobRecord]:
        return [r for r in self.records.values() if r.pending_event is not None and r.finished_at is not None
                and r.finished_at < ended_before][:limit]

    def count(self, tenant: str, *, status: str | None = None, created_since: datetime | None = None) -> int:
        with self._changed:
            return sum(1 for r in self.records.values() if r.tenant == tenant
                       and (status is None or r.status.value == status)
                       and (created_since is None or r.created_at >= created_since))


class InMemoryPublisher:
    def __init__(self) -> None:
        self.published: list[JobMessage] = []
        self.failing: Exception | None = None  # raised by publish while set

    def publish(self, message: JobMessage) -> str:
        if self.failing is not None:
            raise self.failing
        self.published.append(message)
        return str(len(self.published))


class InMemoryResultStore:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}

    def write_result(self, job_id: str, body: dict[str, Any]) -> str:
        self.objects[job_id] = body
        return f"gs://memory/results/{job_id}.json"


class InMemoryApiKeyStore:
    def __init__(self, *keys: ApiKey) -> None:
        self.keys = {key.key_hash: key for key in keys}

    def get(self, key_hash: str) -> ApiKey | None:
        return self.keys.get(key_hash)

    def create(self, key: ApiKey) -> None:
        self.keys[key.key_hash] = key

    def revoke(self, key_hash: str, *, at: datetime) -> ApiKey | None:
        return None

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        return [k for k in self.keys.values() if tenant is None or k.tenant == tenant]


@dataclass
class InMemoryEngine:
    """An engine double: one "word" per step for `max_tokens` steps (the prompt's words count as its
    tokens), abort honoured between steps. `fail_with` is raised by the next generate() instead; `hold`,
    when set, keeps every generation waiting before its first step until it is released."""

    model: str = "tiny-llama"
    max_model_len: int = 64
    fail_with: BaseException | None = None
    hold: asyncio.Event | None = None
    started: list[str] = field(default_factory=list)
    _aborted: set[str] = field(default_factory=set)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(model=self.model, max_model_len=self.max_model_len, max_concurrency=8)

    @property
    def stats(self) -> EngineStats:
        return EngineStats(forward_passes=0, requests_started=len(self.started), tokens_generated=0, running=0)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationUpdate]:
        if self.fail_with is not None:
            raise self.fail_with
        text = request.prompt if request.prompt is not None else " ".join(m.content for m in request.messages or ())
        prompt_tokens = len(text.split())
        if prompt_tokens + request.sampling.max_tokens > self.max_model_len:
            raise PromptTooLong(f"{prompt_tokens} + {request.sampling.max_tokens} > {self.max_model_len}")
        self.started.append(request.request_id)
        if self.hold is not None:
            await self.hold.wait()
        words: list[str] = []
        for step in range(request.sampling.max_tokens):
            await asyncio.sleep(0)
            if request.request_id in self._aborted:
                yield GenerationUpdate(" ".join(words), prompt_tokens, len(words), FinishReason.ABORT)
                return
            words.append(f"w{step}")
            done = FinishReason.LENGTH if step == request.sampling.max_tokens - 1 else None
            yield GenerationUpdate(" ".join(words), prompt_tokens, len(words), done)

    async def abort(self, request_id: str) -> None:
        self._aborted.add(request_id)

    async def check_health(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


class InMemoryBatchStore:
    def __init__(self) -> None:
        self.records: dict[str, BatchRecord] = {}
        self._lock = threading.Lock()

    def create(self, record: BatchRecord) -> bool:
        with self._lock:
            if record.id in self.records:
                return False
            self.records[record.id] = record
            return True

    def get(self, batch_id: str) -> BatchRecord | None:
        return self.records.get(batch_id)

    def delete(self, batch_id: str) -> None:
        self.records.pop(batch_id, None)

    def update(self, batch_id: str, mutate: Callable[[BatchRecord], BatchRecord | None]) -> tuple[BatchRecord | None, bool]:
        with self._lock:
            current = self.records.get(batch_id)
            if current is None:
                return None, False
            new = mutate(current)
            if new is None or new == current:
                return current, False
            self.records[batch_id] = new
            return new, True

    def find_stale(self, *, updated_before: datetime, limit: int) -> list[BatchRecord]:
        return [r for r in self.records.values()
                if not r.status.is_final and r.updated_at is not None and r.updated_at < updated_before][:limit]

    def find_unannounced(self, *, ended_before: datetime, limit: int) -> list[BatchRecord]:
        return [r for r in self.records.values() if r.pending_event is not None and r.updated_at is not None
                and r.updated_at < ended_before][:limit]

    def list(self, tenant: str, *, limit: int, after: BatchRecord | None) -> tuple[list[BatchRecord], bool]:
        mine = sorted((r for r in self.records.values() if r.tenant == tenant), key=lambda r: (r.created_at, r.id),
                      reverse=True)
        if after is not None:
            mine = [r for r in mine if (r.created_at, r.id) < (after.created_at, after.id)]
        return mine[:limit], len(mine) > limit

    def watch(self, batch_id: str, on_change: Callable[[BatchRecord], None]) -> Callable[[], None]:
        return lambda: None  # the fast tests do not watch batches


class InMemoryBatchInputs:
    """Bucket objects as {uri: (data, generation)}."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, int]] = {}

    def exists(self, uri: str, *, generation: str | None = None) -> bool:
        held = self.objects.get(uri)
        return held is not None and (generation is None or str(held[1]) == generation)

    def upload(self, uri: str, data: bytes) -> None:
        self.objects[uri] = (data, self.objects.get(uri, (b"", 0))[1] + 1)

    def delete(self, uri: str) -> None:
        self.objects.pop(uri, None)


class InMemoryLauncher:
    """Records each launch; `failing` makes the next ones raise, as an unreachable Cloud Run API would."""

    def __init__(self) -> None:
        self.launched: list[dict[str, str]] = []
        self.failing: Exception | None = None

    def launch(self, *, batch_id: str, input_uri: str, output_prefix: str) -> str:
        if self.failing is not None:
            raise self.failing
        self.launched.append({"batch_id": batch_id, "input_uri": input_uri, "output_prefix": output_prefix})
        return f"executions/{len(self.launched)}"


class InMemoryFileStore:
    def __init__(self) -> None:
        self.records: dict[str, FileRecord] = {}

    def create(self, record: FileRecord) -> bool:
        if record.id in self.records:
            return False
        self.records[record.id] = record
        return True

    def put(self, record: FileRecord) -> None:
        self.records[record.id] = record

    def get(self, file_id: str) -> FileRecord | None:
        return self.records.get(file_id)

    def delete(self, file_id: str) -> None:
        self.records.pop(file_id, None)

    def list(self, tenant: str, *, purpose: str | None, limit: int, after: FileRecord | None,
             newest_first: bool) -> FilePage:
        mine = sorted((r for r in self.records.values() if r.tenant == tenant and purpose in (None, r.purpose)),
                      key=lambda r: (r.created_at, r.id), reverse=newest_first)
        if after is not None:
            key = (after.created_at, after.id)
            mine = [r for r in mine if ((r.created_at, r.id) < key if newest_first else (r.created_at, r.id) > key)]
        return FilePage(mine[:limit], has_more=len(mine) > limit)


class InMemoryContents:
    """File bytes as {uri: bytes}; a writer's bytes appear only when it finishes, as an upload's do."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.expiry: dict[str, datetime] = {}

    def writer(self, uri: str, *, max_bytes: int) -> _InMemoryWriter:
        return _InMemoryWriter(self, uri, max_bytes)

    def chunks(self, uri: str) -> Iterator[bytes]:
        if uri not in self.objects:
            raise NotFound("the file's content is gone", code="file_not_found")
        data = self.objects[uri]
        yield from (data[i:i + 4096] for i in range(0, len(data), 4096))

    def size(self, uri: str) -> int | None:
        return len(self.objects[uri]) if uri in self.objects else None

    def mark_expiry(self, uri: str, expire_at: datetime) -> None:
        self.expiry[uri] = expire_at

    def delete(self, uri: str) -> None:
        self.objects.pop(uri, None)


class _InMemoryWriter:
    def __init__(self, contents: InMemoryContents, uri: str, max_bytes: int) -> None:
        self._contents, self._uri, self._max = contents, uri, max_bytes
        self._parts: list[bytes] = []
        self.written = 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self._max:
            raise PayloadTooLarge(f"a file may be at most {self._max} bytes")
        self._parts.append(data)
        self.written += len(data)
        return len(data)

    def finish(self) -> None:
        self._contents.objects[self._uri] = b"".join(self._parts)

    def abort(self) -> None:
        self._parts = []


class _NoSender:
    """The fast API tests send no webhooks; one that tries is a defect of the test."""

    def send(self, url: str, *, event_id: str, body: bytes, secrets: list[str], now: datetime) -> Any:
        raise AssertionError(f"no webhook may be sent from this test ({event_id} to {url})")


def api_ports(**given: Any) -> ApiPorts:
    """The API functions' ports, all in memory: those in `given`, fresh ones for the rest."""
    fresh: dict[str, Any] = {"jobs": InMemoryJobStore(), "batches": InMemoryBatchStore(),
                             "publisher": InMemoryPublisher(), "api_keys": InMemoryApiKeyStore(),
                             "batch_inputs": InMemoryBatchInputs(), "batch_launcher": InMemoryLauncher(),
                             "files": InMemoryFileStore(), "file_contents": InMemoryContents(),
                             "endpoints": InMemoryEndpointStore(), "deliveries": InMemoryDeliveryQueue(),
                             "sender": _NoSender(), "resolve": no_dns}
    return ApiPorts(**{**fresh, **given})


class InMemoryEndpointStore:
    def __init__(self) -> None:
        self.endpoints: dict[str, WebhookEndpoint] = {}

    def create(self, endpoint: WebhookEndpoint) -> None:
        self.endpoints[endpoint.id] = endpoint

    def get(self, endpoint_id: str) -> WebhookEndpoint | None:
        return self.endpoints.get(endpoint_id)

    def delete(self, endpoint_id: str) -> None:
        self.endpoints.pop(endpoint_id, None)

    def list(self, tenant: str) -> list[WebhookEndpoint]:
        return [e for e in self.endpoints.values() if e.tenant == tenant]

    def update(self, endpoint_id: str,
               mutate: Callable[[WebhookEndpoint], WebhookEndpoint | None]) -> WebhookEndpoint | None:
        current = self.endpoints.get(endpoint_id)
        if current is None:
            return None
        self.endpoints[endpoint_id] = mutate(current) or current
        return self.endpoints[endpoint_id]


class InMemoryDeliveryQueue:
    """The deliveries topic: what was enqueued, in order; `failing` makes the next enqueues raise."""

    def __init__(self) -> None:
        self.messages: list[DeliveryMessage] = []
        self.failing: Exception | None = None

    def enqueue(self, messages: list[DeliveryMessage]) -> None:
        if self.failing is not None:
            raise self.failing
        self.messages.extend(messages)


def no_dns(host: str, port: int) -> list[str]:
    """A resolver for the fast tier: no name resolves (tests that need one pass their own)."""
    raise OSError(f"{host}:{port} is not resolvable in the fast tier")
