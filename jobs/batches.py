"""Batch files in the OpenAI Batch API format (CONTRACT §4): parsing and validating input lines, the
`batches/{id}` document, and the output and error line shapes. Pure: no Google client, no engine.

Input line:  {"custom_id": str, "method": "POST", "url": "/v1/chat/completions" | "/v1/completions", "body": {...}}
Output line: {"id", "custom_id", "response": {"status_code": 200, "request_id", "body": <OpenAI response>}, "error": null}
Error line:  {"id", "custom_id" (null if the line could not be parsed), "response": null, "error": {"code", "message", "line"}}

Every change of a `batches/{id}` document is one of the pure decisions at the end of this module
(`BatchRecord -> BatchRecord | None`, None: leave it), applied by `BatchStore.update`; every status
change in them goes through `jobs.batch_state.transition()`. The API (jobs/batch_service.py), the batch
runner (runner/batch.py) and the reconciler are the only callers; the nightly workflow goes through the API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.batch_state import RESUMABLE, BatchStatus, transition
from jobs.models import INPUT_FIELD, JobRequest, Usage
from jobs.results import openai_response
from jobs.validation import field_errors, unsupported_fields
from jobs.webhooks import WebhookDelivery, pending_event

URLS: dict[str, Literal["chat", "completion"]] = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
MAX_CUSTOM_ID = 512  # OpenAI does not document one; a bound keeps error lines and memory sane
DEFAULT_BATCH_TTL_SECONDS = 30 * 86400
# Options of POST /v1/jobs that mean nothing for a line of a batch: rejected rather than silently ignored.
JOB_ONLY_FIELDS = ("priority", "ttl_seconds", "idempotency_key", "deadline_seconds")
_BATCH_ID = re.compile(r"^batch_[A-Za-z0-9_-]{1,64}$")


class ErrorCode(str, Enum):
    """`error.code` in errors.jsonl; `retryable` ones are run again by a rerun on the same output."""

    INVALID_JSON = "invalid_json"  # the line is not a JSON object
    INVALID_LINE = "invalid_line"  # custom_id / method / url / body missing or of the wrong type
    UNSUPPORTED_URL = "unsupported_url"
    INVALID_BODY = "invalid_request"  # the body fails the request rules (as POST /v1/jobs answers 400)
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    URL_BODY_MISMATCH = "url_body_mismatch"  # chat URL without `messages`, completions URL without `prompt`
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
    MODEL_NOT_FOUND = "model_not_found"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    ENGINE_ERROR = "engine_error"  # transient engine failure, still failing after retries
    BATCH_CANCELLED = "batch_cancelled"  # not started before the batch was cancelled
    BATCH_EXPIRED = "batch_expired"  # not started before the batch's expires_at
    URL_ENDPOINT_MISMATCH = "url_endpoint_mismatch"  # the line's url is not the batch's endpoint


@dataclass(frozen=True, slots=True)
class BatchLine:
    """A valid input line, ready to run."""

    line: int  # 1-based line number in the input file
    custom_id: str
    url: str
    request: JobRequest

    @property
    def kind(self) -> Literal["chat", "completion"]:
        return URLS[self.url]


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    custom_id: str | None
    code: ErrorCode
    message: str


class _LineShape(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    custom_id: str = Field(min_length=1, max_length=MAX_CUSTOM_ID)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


def url_body_mismatch(url: str, request: JobRequest) -> str | None:
    """Why the body does not fit the endpoint (a chat URL without `messages`, a completions URL without
    `prompt`), or None when it does. `url` is one of URLS."""
    if request.kind == URLS[url]:
        return None
    return f"{url} needs `{INPUT_FIELD[URLS[url]]}` in the body"


def parse_line(raw: str | bytes, line: int) -> BatchLine | LineError:
    """Validate one input line (duplicates are the caller's: see `parse_lines`)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        return LineError(line, None, ErrorCode.INVALID_JSON, f"line {line} is not valid JSON: {str(err)[:200]}")
    if not isinstance(value, dict):
        return LineError(line, None, ErrorCode.INVALID_JSON, f"line {line} is not a JSON object")
    raw_id = value.get("custom_id")
    custom_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_CUSTOM_ID else None
    try:
        shape = _LineShape.model_validate(value)
    except ValidationError as err:
        fields = ", ".join(sorted({".".join(str(p) for p in e["loc"]) or "line" for e in err.errors()}))
        return LineError(line, custom_id, ErrorCode.INVALID_LINE,
                         f"line {line}: custom_id (string), method \"POST\", url and body (object) are required; "
                         f"invalid: {fields}")
    job_only = [f for f in JOB_ONLY_FIELDS if f in shape.body] + (["stream"] if shape.body.get("stream") else [])
    if job_only:
        return LineError(line, shape.custom_id, ErrorCode.UNSUPPORTED_PARAMETER,
                         f"not supported in a batch line: {', '.join(job_only)}")
    if shape.url not in URLS:
        return LineError(line, custom_id, ErrorCode.UNSUPPORTED_URL,
                         f"url {shape.url[:100]!r} is not supported; use one of: {', '.join(URLS)}")
    try:
        request = JobRequest.model_validate(shape.body)
    except ValidationError as err:
        return _body_error(err, line, shape.custom_id)
    if mismatch := url_body_mismatch(shape.url, request):
        return LineError(line, shape.custom_id, ErrorCode.URL_BODY_MISMATCH, mismatch)
    return BatchLine(line, shape.custom_id, shape.url, request)


def parse_lines(lines: Iterable[bytes | str]) -> Iterator[BatchLine | LineError]:
    """Parse a whole file, line by line. Blank lines are skipped (they still count in line numbers); a
    custom_id seen on an earlier line (valid or not) makes the later line a duplicate: the first one runs."""
    seen: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        parsed = parse_line(raw, number)
        custom_id = parsed.custom_id
        if custom_id is not None and custom_id in seen:
            yield LineError(number, custom_id, ErrorCode.DUPLICATE_CUSTOM_ID,
                            f"custom_id {custom_id!r} already appeared earlier in the file; only the first runs")
            continue
        if custom_id is not None:
            seen.add(custom_id)
        yield parsed


def _body_error(err: ValidationError, line: int, custom_id: str) -> LineError:
    """The API's field details (jobs/validation.py), as one line of the error file."""
    errors = field_errors(err)
    if unsupported := unsupported_fields(errors):
        return LineError(line, custom_id, ErrorCode.UNSUPPORTED_PARAMETER,
                         f"unrecognised request argument(s): {', '.join(unsupported)}")
    first = errors[0]
    return LineError(line, custom_id, ErrorCode.INVALID_BODY, f"{first.field or 'body'}: {first.message}"[:500])


def task_share(line: int, *, task_index: int, task_count: int) -> bool:
    """Whether input line `line` belongs to this Cloud Run task (lines are dealt round-robin)."""
    return (line - 1) % task_count == task_index


# --- ids ---------------------------------------------------------------------------------------


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def nightly_batch_id(bucket: str, name: str, generation: str | int) -> str:
    """The id of an object version's batch (POST /v1/batches with input_generation, as the nightly workflow
    asks): the same version always gets the same batch (and output folder), so a run that failed is resumed
    the next night. base64(SHA-256("<bucket>/<name>#<generation>")) with + → - and / → _, first 32 characters."""
    digest = hashlib.sha256(f"{bucket}/{name}#{generation}".encode()).digest()
    return "batch_" + base64.b64encode(digest).decode().replace("+", "-").replace("/", "_")[:32]


def is_batch_id(value: str) -> bool:
    return bool(_BATCH_ID.match(value))


def _line_digest(batch_key: str, custom_id: str) -> str:
    # Deterministic per (batch, custom_id): a rerun writes the same ids for the same requests.
    return hashlib.sha256(f"{batch_key}\x00{custom_id}".encode()).hexdigest()[:24]


# --- output and error lines --------------------------------------------------------------------


def output_line(
    item: BatchLine, *, batch_key: str, model: str, created: datetime, text: str, finish_reason: str, usage: Usage
) -> dict[str, Any]:
    digest = _line_digest(batch_key, item.custom_id)
    prefix = "chatcmpl" if item.kind == "chat" else "cmpl"
    body = openai_response(response_id=f"{prefix}-{digest}", kind=item.kind, model=model, created=created,
                           text=text, finish_reason=finish_reason, usage=usage)
    return {"id": f"batch_req_{digest}", "custom_id": item.custom_id,
            "response": {"status_code": 200, "request_id": f"req_{digest}", "body": body}, "error": None}


def error_line(error: LineError, *, batch_key: str) -> dict[str, Any]:
    key = error.custom_id if error.custom_id is not None else f"\x00line {error.line}"
    digest = _line_digest(batch_key, f"{key}\x00{error.line}")
    return {"id": f"batch_req_{digest}", "custom_id": error.custom_id, "response": None,
            "error": {"code": error.code.value, "message": error.message, "line": error.line}}


def dumps_line(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"


# --- the batches/{id} document -----------------------------------------------------------------


def unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


DEFAULT_COMPLETION_WINDOW = "24h"  # OpenAI's only window
MAX_COMPLETION_WINDOW = timedelta(days=7)
_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_length(window: str) -> timedelta:
    """The length of a completion window: OpenAI's "24h", or llmq's own `<n>s|m|h|d` up to 7 days. Raises
    ValueError for anything else."""
    match = _WINDOW.match(window)
    length = timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]]) if match else None
    if length is None or length > MAX_COMPLETION_WINDOW:
        raise ValueError("completion_window is \"24h\" (or a duration such as \"90m\", \"2h\", up to \"7d\")")
    return length



class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0  # lines in output.jsonl
    failed: int = 0  # lines in errors.jsonl


class TaskCounts(RequestCounts):
    """One runner task's counts, and the tokens of its completed lines."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def openai(self) -> dict[str, Any]:
        """OpenAI's batch `usage` (no cached or reasoning tokens here)."""
        return {"input_tokens": self.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class BatchErrorInfo(BaseModel):
    code: str
    message: str


class BatchRecord(BaseModel):
    """The Firestore document `batches/{id}`. Times are timezone-aware datetimes (Timestamps).
    `task_counts` holds each Cloud Run task's own counts (key: task index); `request_counts` is their sum."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: BatchStatus
    input_uri: str
    output_uri: str | None = None
    error_uri: str | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    task_counts: dict[str, TaskCounts] = Field(default_factory=dict)
    usage: TokenUsage = Field(default_factory=TokenUsage)  # the sum of the tasks' tokens
    tenant: str = "public"
    source: str = "cli"  # cli | api | nightly
    model: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    error: BatchErrorInfo | None = None
    execution: str | None = None  # the launcher's handle (Cloud Run execution, local pid)
    # OpenAI's batch fields: the endpoint every line must use (None: either), the uploaded input file, and
    # the output and error files (jobs/files.py) once they are written.
    endpoint: str | None = None
    input_file_id: str | None = None
    completion_window: str = DEFAULT_COMPLETION_WINDOW
    output_file_id: str | None = None
    error_file_id: str | None = None
    # The outbox of webhooks (jobs/webhooks.py): set by the write that ends the batch, cleared once announced.
    pending_event: str | None = None
    webhooks: dict[str, WebhookDelivery] = Field(default_factory=dict)  # per endpoint id
    created_at: datetime
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None
    expired_at: datetime | None = None
    expires_at: datetime | None = None  # the end of the completion window (None: a batch without one)
    updated_at: datetime | None = None
    expire_at: datetime | None = None  # the TTL: when Firestore deletes the document

    @classmethod
    def new(cls, *, batch_id: str, input_uri: str, output_prefix: str | None, now: datetime, tenant: str = "public",
            source: str = "cli", metadata: dict[str, str] | None = None, endpoint: str | None = None,
            input_file_id: str | None = None, completion_window: str | None = None,
            ttl_seconds: int = DEFAULT_BATCH_TTL_SECONDS) -> BatchRecord:
        output_uri, error_uri = output_uris(output_prefix) if output_prefix else (None, None)
        window = completion_window or DEFAULT_COMPLETION_WINDOW
        return cls(id=batch_id, status=BatchStatus.VALIDATING, input_uri=input_uri, output_uri=output_uri,
                   error_uri=error_uri, tenant=tenant, source=source, metadata=metadata or {}, endpoint=endpoint,
                   input_file_id=input_file_id, completion_window=window, created_at=now, updated_at=now,
                   expires_at=now + window_length(window),
                   expire_at=now + max(timedelta(seconds=ttl_seconds), window_length(window)))

    def to_document(self) -> dict[str, Any]:
        doc = self.model_dump(mode="python")
        doc["status"] = self.status.value
        return doc

    def view(self) -> dict[str, Any]:
        """What clients see over HTTP: OpenAI's batch object (times in unix seconds), and llmq's own fields
        beside it (input_uri, output_uri, error_uri, error, source)."""
        stamps = {name: unix(getattr(self, name)) for name in _OPENAI_TIMES}
        errors = None if self.error is None else {"object": "list", "data": [
            {"code": self.error.code, "message": self.error.message, "param": None, "line": None}]}
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "input_file_id": self.input_file_id,
                "completion_window": self.completion_window, "status": self.status.value,
                "output_file_id": self.output_file_id, "error_file_id": self.error_file_id, "errors": errors,
                **stamps, "request_counts": self.request_counts.model_dump(), "metadata": self.metadata,
                "model": self.model, "usage": self.usage.openai(),
                "input_uri": self.input_uri, "output_uri": self.output_uri, "error_uri": self.error_uri,
                "error": None if self.error is None else self.error.model_dump(), "source": self.source,
                "webhooks": {k: v.model_dump(mode="json") for k, v in self.webhooks.items()}}


_OPENAI_TIMES = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
                 "expired_at", "cancelling_at", "cancelled_at")




def output_uris(prefix: str) -> tuple[str, str]:
    base = prefix if prefix.endswith("/") else prefix + "/"
    return base + "output.jsonl", base + "errors.jsonl"


def with_status(record: BatchRecord, status: BatchStatus, *, now: datetime, **changes: Any) -> BatchRecord:
    """The record moved to `status` (checked by `transition()`; the same status is a plain update),
    stamping `<status>_at` the first time it is reached. Raises InvalidTransition."""
    update: dict[str, Any] = {"status": status, "updated_at": now, **changes}
    if status is not record.status:
        transition(record.status, status)
        # The outbox of webhooks, in the write that ends it (a resumed batch owes nothing until it ends again).
        update["pending_event"] = pending_event("batches", status.value) if status.is_final else None
    stamp = f"{status.value}_at"
    if stamp in BatchRecord.model_fields and getattr(record, stamp) is None:
        update[stamp] = now
    return record.model_copy(update=update)


def _walk(record: BatchRecord, path: tuple[BatchStatus, ...], *, now: datetime, **changes: Any) -> BatchRecord:
    """Move along `path` from wherever the record is on it (from its start if it is not on it), one
    allowed transition at a time, so each `<status>_at` on the way is stamped."""
    start = path.index(record.status) + 1 if record.status in path else 0
    for status in path[start:]:
        record = with_status(record, status, now=now)
    return record.model_copy(update=changes) if changes else record


_TO_COMPLETED = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.COMPLETED)
_TO_CANCELLED = (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
_TO_EXPIRED = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.EXPIRED)


def with_task_counts(record: BatchRecord, *, task_index: int, counts: TaskCounts, total: int,
                     now: datetime) -> BatchRecord:
    """Record one task's counts and re-aggregate request_counts and usage (total is the whole file's)."""
    tasks = {**record.task_counts, str(task_index): counts}
    aggregate = RequestCounts(total=total, completed=sum(c.completed for c in tasks.values()),
                              failed=sum(c.failed for c in tasks.values()))
    usage = TokenUsage(prompt_tokens=sum(c.prompt_tokens for c in tasks.values()),
                       completion_tokens=sum(c.completion_tokens for c in tasks.values()))
    return record.model_copy(update={"task_counts": tasks, "request_counts": aggregate, "usage": usage,
                                     "updated_at": now})


def with_execution(record: BatchRecord, handle: str) -> BatchRecord:
    """Remember the launcher's handle (no status change)."""
    return record.model_copy(update={"execution": handle})


def resume(record: BatchRecord, *, now: datetime) -> BatchRecord | None:
    """A rerun of a batch that ended failed or completed: back to validating, the error cleared (the
    runner then skips what is done and retries the rest). None for any other status: an open batch is
    someone's to finish, a cancelled one stays cancelled."""
    if record.status not in RESUMABLE:
        return None
    return with_status(record, BatchStatus.VALIDATING, now=now, error=None)


def resume_failed(record: BatchRecord, *, now: datetime) -> BatchRecord | None:
    """The API asked again for an object version's batch (the nightly run, the next night): a failed one
    is resumed (and started again by the caller); any other is left as it is — an open one is being
    worked on, a completed or cancelled one is done."""
    return resume(record, now=now) if record.status is BatchStatus.FAILED else None


def start_requests(record: BatchRecord, *, task_index: int, counts: TaskCounts, total: int, now: datetime,
                   **uris: Any) -> BatchRecord:
    """A runner task starts on its requests: its counts and the URIs recorded, the batch in_progress —
    unless a cancel is under way (kept), or it is there already (a sibling task). A batch that ended
    meanwhile (the reconciler gave it up as `runner_lost` while the model loaded) is resumed: this
    runner is working on it after all."""
    record = with_task_counts(record, task_index=task_index, counts=counts, total=total, now=now)
    if record.status.stops_new_requests or record.status is BatchStatus.IN_PROGRESS:
        return record.model_copy(update=uris)
    if record.status in RESUMABLE:
        record = with_status(record, BatchStatus.VALIDATING, now=now, error=None)
    return with_status(record, BatchStatus.IN_PROGRESS, now=now, **uris)


def begin_finalizing(record: BatchRecord, *, now: datetime) -> BatchRecord | None:
    """Every task is done and the parts are being merged: in_progress → finalizing. None otherwise (a
    cancel, or a batch already past it)."""
    if record.status is not BatchStatus.IN_PROGRESS:
        return None
    return with_status(record, BatchStatus.FINALIZING, now=now)


def finish_requests(record: BatchRecord, *, task_index: int, counts: TaskCounts, total: int, now: datetime,
                    final_files: bool, cancelled: bool, expired: bool = False,
                    file_ids: Mapping[str, str | None] | None = None) -> BatchRecord:
    """A runner task is done. Its counts always; and, from the task that wrote the final files, the
    batch's end with its output and error files' ids: cancelled if a cancel stopped it, expired if its
    window ended first, else completed (each through finalizing). A batch already final keeps its status."""
    record = with_task_counts(record, task_index=task_index, counts=counts, total=total, now=now)
    if not final_files or record.status.is_final:
        return record
    files = file_ids or {}
    if cancelled or record.status.stops_new_requests:
        return _walk(record, _TO_CANCELLED, now=now, **files)
    return _walk(record, _TO_EXPIRED if expired else _TO_COMPLETED, now=now, **files)


def fail_input(record: BatchRecord, *, code: str, message: str, counts: RequestCounts, now: datetime,
               **uris: Any) -> BatchRecord:
    """The input as a whole is unusable (missing, no valid line): failed, with the reason. A batch being
    cancelled ends cancelled instead (nothing ran), with the same reason."""
    error = BatchErrorInfo(code=code, message=message)
    if record.status.stops_new_requests:
        return _walk(record, _TO_CANCELLED, now=now, error=error, request_counts=counts, **uris)
    if record.status is BatchStatus.COMPLETED:
        record = with_status(record, BatchStatus.VALIDATING, now=now)
    return with_status(record, BatchStatus.FAILED, now=now, error=error, request_counts=counts, **uris)


LAUNCH_FAILED = "launch_failed"


def launch_failed(record: BatchRecord, *, now: datetime, message: str) -> BatchRecord | None:
    """A batch resumed for a rerun whose runner could not be started: back to failed, so the next rerun
    tries again. None if something else moved it meanwhile."""
    if record.status is not BatchStatus.VALIDATING:
        return None
    return with_status(record, BatchStatus.FAILED, now=now, error=BatchErrorInfo(code=LAUNCH_FAILED, message=message))


def cancel(record: BatchRecord, *, now: datetime) -> BatchRecord | None:
    """Ask a batch to stop: validating/in_progress/finalizing → cancelling (the runner ends it `cancelled`).
    None (no change) when it is already final or cancelling."""
    if record.status.is_final or record.status is BatchStatus.CANCELLING:
        return None
    return with_status(record, BatchStatus.CANCELLING, now=now)


RUNNER_LOST = "runner_lost"


def abandon(record: BatchRecord, *, now: datetime, stale_for: timedelta) -> BatchRecord | None:
    """End a batch that nothing is working on: not final, and its document untouched for `stale_for` (a
    running batch writes its progress about once a second). Its runner never started (a lost launch, a
    local launcher restarted) or died for good. A `cancelling` batch ends `cancelled`; one past its
    `expires_at` ends `expired`; any other ends `failed`, code `runner_lost`, which a rerun (or a runner that
    starts late) resumes. None: leave it."""
    if record.status.is_final or (record.updated_at or record.created_at) > now - stale_for:
        return None
    minutes = int(stale_for.total_seconds() // 60)
    if record.status is not BatchStatus.CANCELLING and record.expires_at is not None and record.expires_at <= now:
        return with_status(record, BatchStatus.EXPIRED, now=now, error=BatchErrorInfo(
            code=RUNNER_LOST, message=f"expired; no runner had worked on it for {minutes} min, so lines that "
                                      "never ran are in neither output file"))
    if record.status is BatchStatus.CANCELLING:
        return with_status(record, BatchStatus.CANCELLED, now=now, error=BatchErrorInfo(
            code=RUNNER_LOST, message=f"cancelled; no runner had worked on it for {minutes} min, so lines "
                                      "that never ran are in neither output file"))
    return with_status(record, BatchStatus.FAILED, now=now, error=BatchErrorInfo(
        code=RUNNER_LOST, message=f"no progress for {minutes} min: its runner never started or stopped; "
                                  "rerunning the batch resumes it"))


Mutation = Callable[[BatchRecord], BatchRecord | None]


class BatchStore(Protocol):
    """`batches/{id}` in Firestore; every method may raise DependencyUnavailable."""

    def create(self, record: BatchRecord) -> bool:
        """Create the document; False if the id exists already."""
        ...

    def get(self, batch_id: str) -> BatchRecord | None: ...

    def delete(self, batch_id: str) -> None: ...

    def update(self, batch_id: str, mutate: Mutation) -> tuple[BatchRecord | None, bool]:
        """Apply `mutate` with a precondition on the document's update time (re-read and re-applied on a
        concurrent change). Returns (document after, changed); (None, False) if it does not exist."""
        ...

    def find_stale(self, *, updated_before: datetime, limit: int) -> list[BatchRecord]:
        """Batches not final whose document was last written before `updated_before`."""
        ...

    def find_unannounced(self, *, ended_before: datetime, limit: int) -> list[BatchRecord]:
        """Final batches whose webhook event is still pending, last written before `ended_before`."""
        ...

    def list(self, tenant: str, *, limit: int, after: BatchRecord | None) -> tuple[list[BatchRecord], bool]:
        """The tenant's batches, newest first (by created_at, then id), from just past `after`; and whether
        more follow."""
        ...

    def watch(self, batch_id: str, on_change: Callable[[BatchRecord], None]) -> Callable[[], None]:
        """Listen to the document; returns the unsubscribe."""
        ...


class BatchInputs(Protocol):
    """The batch bucket, as the API needs it."""

    def exists(self, uri: str, *, generation: str | None = None) -> bool:
        """Whether the object exists (with `generation`: that version of it is the live one)."""
        ...

    def upload(self, uri: str, data: bytes) -> None: ...

    def delete(self, uri: str) -> None: ...


class BatchLauncher(Protocol):
    """Starts the batch runner for a batch (Cloud Run job execution in production, a subprocess locally)."""

    def launch(self, *, batch_id: str, input_uri: str, output_prefix: str) -> str:
        """Start it without waiting; return a handle for the record. Raises DependencyUnavailable."""
        ...
