"""Typed views of what the API answers. Read leniently (`extra="allow"`): a field a newer server adds is
kept, not an error, and timestamps are left as the server sent them (RFC 3339 strings or unix seconds)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
FINAL_BATCH_STATUSES = frozenset({"completed", "failed", "cancelled", "expired"})


class _View(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_View):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class JobErrorInfo(_View):
    code: str
    message: str = ""


class Job(_View):
    """A job as `GET /v1/jobs/{id}` shows it."""

    id: str
    status: str  # JobStatus; a str so that a status a newer server adds is read, not refused
    model: str | None = None
    priority: str | None = None
    created_at: Any = None
    started_at: Any = None
    finished_at: Any = None
    attempts: int = 0
    output: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    result_uri: str | None = None
    error: JobErrorInfo | None = None
    metadata: dict[str, str] = {}
    metrics: dict[str, float] = {}

    @property
    def done(self) -> bool:
        return self.status in FINAL_JOB_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class RequestCounts(_View):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Batch(_View):
    """A batch as `GET /v1/batches/{id}` shows it. Only these fields are relied on; the rest (timestamps,
    file ids) stay in the model's extra fields while the batch object moves to OpenAI's shape."""

    id: str
    status: str
    request_counts: RequestCounts = RequestCounts()
    output_uri: str | None = None
    error_uri: str | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_BATCH_STATUSES

    def extra(self, name: str) -> Any:
        """A field outside the ones modelled (for example OpenAI's `output_file_id`), or None."""
        return (self.model_extra or {}).get(name)


class Model(_View):
    id: str
    object: str = "model"
    alias_of: str | None = None


class MapResult(BaseModel):
    """One request of `map()`: its position in the input, its `custom_id` (when the request had one), and
    the job's final view, or the error that kept it from running."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: int
    custom_id: str | None = None
    job: Job | None = None
    error: Exception | None = None

    @property
    def succeeded(self) -> bool:
        return self.job is not None and self.job.succeeded
