"""The result object written to GCS: an OpenAI response (chat.completion or text_completion) plus
the job's timings. Shared by the push runner and the batch runner."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from jobs.models import Usage

# The document keeps a bounded prefix of the output (listeners get the whole document on each
# change; a document is at most 1 MiB); the full text is in the result object.
MAX_DOCUMENT_OUTPUT_CHARS = 100_000


def openai_response(
    *,
    response_id: str,
    kind: Literal["chat", "completion"],
    model: str,
    created: datetime,
    text: str,
    finish_reason: str,
    usage: Usage,
) -> dict[str, Any]:
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {
        "id": response_id,
        "object": obj,
        "created": int(created.timestamp()),
        "model": model,
        "choices": [choice],
        "usage": usage.model_dump(),
    }


def document_output(text: str) -> str:
    return text[:MAX_DOCUMENT_OUTPUT_CHARS]
