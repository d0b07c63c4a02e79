"""Request and job models: the OpenAI-compatible request, the job record (the Firestore document)
and the job view returned over HTTP."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from jobs.constants import MAX_TTL_SECONDS
from jobs.engine import ChatTurn, GenerationRequest, SamplingOptions
from jobs.state import JobStatus
from jobs.webhooks import WebhookDelivery

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_MESSAGES = 256
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_LENGTH = 256
MAX_METADATA_PAIRS = 16  # OpenAI's limits for metadata
MAX_METADATA_VALUE = 512
MIN_TTL_SECONDS = 60
MAX_DEADLINE_SECONDS = 7 * 86400
DEFAULT_TTL_SECONDS = 86400
DEFAULT_MAX_TOKENS = 256



def _storable_field_name(key: str) -> str:
    # Metadata keys become Firestore field names, and Firestore reserves every name of the form __name__.
    if key.startswith("__") and key.endswith("__") and len(key) >= 4:
        raise PydanticCustomError("reserved_key", "keys of the form __name__ are reserved")
    return key


MetadataKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$"), AfterValidator(_storable_field_name)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_LENGTH)]


class TextPart(BaseModel):
    """One part of a message's content in OpenAI's list form. Only text: an image or audio part is refused by
    its `type`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # `developer` is OpenAI's newer name for `system`; tool messages and tool calls are refused by name.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)  # as vLLM's OpenAI server joins text parts

    def to_turn(self) -> ChatTurn:
        # Chat templates know `system`; a developer message is one.
        return ChatTurn("system" if self.role == "developer" else self.role, self.text)


def _storable_schema(schema: dict[str, Any]) -> dict[str, Any]:
    # The schema is stored with the request in Firestore, whose field names may not be of the form __name__.
    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if not key:
                    raise PydanticCustomError("empty_key", "Firestore does not store an empty key")
                _storable_field_name(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
    walk(schema)
    return schema


class JsonSchemaFormat(BaseModel):
    # `schema` is OpenAI's name (and a BaseModel attribute): the field is schema_, read and written as `schema`.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: Annotated[dict[str, Any], AfterValidator(_storable_schema)] = Field(
        default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: `text` (the default), or JSON output constrained by vLLM's structured outputs:
    any JSON object (`json_object`) or one matching `json_schema.schema`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is required with type json_schema, and only with it")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    include_usage: bool = False


class JobRequest(BaseModel):
    """The body of POST /v1/jobs. Strict: wrong types are rejected, not coerced, and an unknown
    field is an error (as OpenAI answers unrecognised arguments)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    prompt: str | None = Field(default=None, min_length=1)
    model: str | None = None
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    # OpenAI's newer name for max_tokens: either may be sent, both only when equal.
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: StopString | list[StopString] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    # OpenAI's penalties, -2 to 2, honoured by the vLLM engine (an engine without them rejects a non-zero one).
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None  # OpenAI's: only with `stream`
    # OpenAI's: one choice per request here (more is a 400 naming `n`); `user` identifies the caller's end user
    # and is kept with the request.
    n: Literal[1] | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None
    priority: Literal["interactive", "batch"] = "interactive"
    metadata: dict[MetadataKey, MetadataValue] | None = None
    ttl_seconds: int = Field(default=DEFAULT_TTL_SECONDS, ge=MIN_TTL_SECONDS, le=MAX_TTL_SECONDS)
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    # A job not started within this many seconds ends `cancelled` (error deadline_exceeded), like
    # SageMaker's RequestTTL: an answer that comes too late is worth nothing to the caller.
    deadline_seconds: int | None = Field(default=None, ge=1, le=MAX_DEADLINE_SECONDS)

    @model_validator(mode="before")
    @classmethod
    def _one_max_tokens(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_completion_tokens") is not None:
            if "max_tokens" in data and data["max_tokens"] != data["max_completion_tokens"]:
                raise ValueError("'max_tokens' and 'max_completion_tokens' differ; send one of them")
            return {**data, "max_tokens": data["max_completion_tokens"]}
        return data

    @model_validator(mode="after")
    def _check_shape(self) -> JobRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of 'messages' and 'prompt' is required")
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed with 'stream': true")
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences")
        if self.metadata is not None and len(self.metadata) > MAX_METADATA_PAIRS:
            raise ValueError(f"'metadata' takes at most {MAX_METADATA_PAIRS} pairs")
        return self

    @property
    def kind(self) -> Literal["chat", "completion"]:
        return "chat" if self.messages is not None else "completion"

    @property
    def prompt_chars(self) -> int:
        if self.messages is not None:
            return sum(len(m.text) for m in self.messages)
        return len(self.prompt or "")

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def body_hash(self) -> str:
        """Hash of the canonical body (defaults filled, the idempotency key left out): the same
        request sent twice hashes the same, whatever its key order or omitted defaults."""
        # OpenAI's optional fields count only when sent, so a body hashes as it did before they existed.
        unset = {name for name in _HASH_IF_SET if getattr(self, name) is None}
        canonical = json.dumps(
            self.model_dump(mode="json", exclude={"idempotency_key", *unset}),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _structured_output(self) -> dict[str, Any]:
        rf = self.response_format
        if rf is None or rf.type == "text":
            return {}
        if rf.json_schema is not None:
            return {"json_schema": json.dumps(rf.json_schema.schema_, sort_keys=True)}
        return {"json_object": True}

    def to_generation(self, request_id: str, *, max_tokens: int | None = None) -> GenerationRequest:
        return GenerationRequest(
            request_id=request_id,
            prompt=self.prompt,
            messages=[m.to_turn() for m in self.messages] if self.messages else None,
            sampling=SamplingOptions(
                max_tokens=max_tokens or self.max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                stop=self.stop_sequences,
                seed=self.seed,
                presence_penalty=self.presence_penalty or 0.0,
                frequency_penalty=self.frequency_penalty or 0.0,
                **self._structured_output(),
            ),
            priority=0 if self.priority == "interactive" else 1,
        )


# The body field that carries each kind's input: named by errors about it.
INPUT_FIELD: dict[Literal["chat", "completion"], str] = {"chat": "messages", "completion": "prompt"}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


_HASH_IF_SET = ("max_completion_tokens", "stream_options", "n", "user", "presence_penalty", "frequency_penalty",
                "response_format")


class JobErrorCode(str, Enum):
    """Why a job ended failed (or cancelled by its deadline): `error.code`, stable."""

    INVALID_MESSAGE = "invalid_message"  # its Pub/Sub message could not be read
    MODEL_NOT_SERVED = "model_not_served"  # it reached a runner that serves another model
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # prompt + max_tokens past the model's context
    REJECTED_BY_ENGINE = "rejected_by_engine"  # the engine's own validation refused the request
    DEADLINE_EXCEEDED = "deadline_exceeded"  # not started before deadline_seconds
    DEAD_LETTERED = "dead_lettered"  # Pub/Sub gave up on its message
    REQUEST_LOST = "request_lost"  # the reconciler found neither the message nor its durable copy


class JobErrorInfo(BaseModel):
    # Written as a JobErrorCode; read as any string too, so a document a newer version wrote (a code this
    # one does not know, during a rolling deploy) stays readable.
    code: Annotated[JobErrorCode | str, Field(union_mode="left_to_right")]
    message: str


class JobRecord(BaseModel):
    """The Firestore document `jobs/{id}`. Times are timezone-aware datetimes (Firestore Timestamps).

    The prompt is not here: listeners receive the whole document on every change, so the request
    travels in the Pub/Sub message, with a durable copy in `jobs/{id}/request/body`.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    tenant: str
    status: JobStatus
    model: str
    kind: Literal["chat", "completion"]
    priority: Literal["interactive", "batch"]
    stream: bool = False
    created_at: datetime
    expire_at: datetime
    request_hash: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    output: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    result_uri: str | None = None
    error: JobErrorInfo | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    deadline_at: datetime | None = None  # from deadline_seconds: must have started by then
    # The delivery that holds the job while running, and until when (see the lease in runner/);
    # the runner instance lets one listener per instance see its jobs being cancelled.
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    runner_instance: str | None = None
    republished_at: datetime | None = None  # the reconciler's last re-publish (at most one per period)
    # The outbox of webhooks (jobs/webhooks.py): set by the write that ends the job, cleared once announced.
    pending_event: str | None = None
    webhooks: dict[str, WebhookDelivery] = Field(default_factory=dict)  # per endpoint id
    trace_id: str | None = None  # the job's trace (W3C, 32 hex digits) across every hop (jobs/tracing.py)

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(mode="python", exclude_none=False)

    def view(self) -> JobView:
        # The view is the record's public fields: derived, never copied, so a new field cannot be forgotten here.
        return JobView.model_validate(self, from_attributes=True)


class JobView(BaseModel):
    """What clients see (HTTP): the document without internal fields; times in RFC 3339."""

    object: Literal["job"] = "job"
    id: str
    status: JobStatus
    model: str
    priority: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expire_at: datetime
    attempts: int
    output: str | None
    finish_reason: str | None
    usage: Usage | None
    result_uri: str | None
    error: JobErrorInfo | None
    metadata: dict[str, str]
    metrics: dict[str, float]
    deadline_at: datetime | None = None
    webhooks: dict[str, WebhookDelivery] = Field(default_factory=dict)
    trace_id: str | None = Field(default=None, description="The job's trace across every hop: W3C trace id, "
                                 "32 hex digits (Cloud Trace; locally `python -m scripts.trace JOB_ID`)")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class JobMessage(BaseModel):
    """The Pub/Sub message body: everything the runner needs, so claiming costs one read."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    tenant: str
    model: str
    request: JobRequest
    # The trace context (W3C `traceparent`) the message carries in its attributes, not in its body.
    trace_headers: dict[str, str] = Field(default_factory=dict, exclude=True)

    def attributes(self) -> dict[str, str]:
        # Attributes let subscriptions filter by model (one runner service per model).
        return {**self.trace_headers, "job_id": self.job_id, "model": self.model, "priority": self.request.priority}
