"""llmq's client: submit now and collect later, wait through Firestore listeners or long-polls, stream,
cancel, run thousands of prompts with backpressure and idempotent resubmission, and batches.

    from llmq import Client
    with Client() as llmq:                       # LLMQ_BASE_URL / LLMQ_API_KEY, or ./.local/stack.json
        job = llmq.submit("Hello", max_tokens=32)
        print(llmq.wait(job.id).output)
"""

from llmq.aio import AsyncClient
from llmq.client import Client
from llmq.errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    GatewayTimeoutError,
    InternalServerError,
    JobError,
    LlmqError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    StreamDivergedError,
    WaitTimeoutError,
)
from llmq.types import Batch, Job, MapResult, Model, RequestCounts, Usage

__all__ = [
    "APIConnectionError", "APIStatusError", "AsyncClient", "AuthenticationError", "BadRequestError", "Batch",
    "Client", "ConfigurationError", "ConflictError", "GatewayTimeoutError", "InternalServerError", "Job", "JobError",
    "LlmqError", "MapResult", "Model", "NotFoundError", "PermissionDeniedError", "RateLimitError", "RequestCounts",
    "ServiceUnavailableError", "StreamDivergedError", "Usage", "WaitTimeoutError",
]
