"""OpenAI's chat and completions endpoints on the local stack (real vLLM on CPU, a tiny model), called with
OpenAI's own SDK: the answers are the SDK's types, and each names a job whose document holds the same text."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from scripts.stack_client import Stack

pytestmark = pytest.mark.timeout(300)
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]


def _base(stack: Stack) -> str:
    # One URL for every route where the stack has it; the function's own URL otherwise.
    return str(stack.info.get("api_url") or stack.info["completions_url"])


@pytest.fixture()
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=_base(stack) + "/v1", api_key=stack.info["api_key"], max_retries=0,
                       timeout=120) as sdk:
        yield sdk


def _job(stack: Stack, http: httpx.Client, job_id: str) -> dict[str, Any]:
    response = stack.job(http, job_id, wait=30)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def test_chat_completion_is_openais_object_and_names_its_job(stack: Stack, client: openai.OpenAI,
                                                             http: httpx.Client) -> None:
    raw = client.chat.completions.with_raw_response.create(model=stack.info["model"], messages=MESSAGES,
                                                           max_tokens=8, temperature=0)
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == stack.info["model"]
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    job_id = raw.headers["llmq-job-id"]
    job = _job(stack, http, job_id)
    assert job["status"] == "succeeded" and job["priority"] == "interactive"
    assert completion.choices[0].message.content == job["output"]
    assert completion.choices[0].finish_reason == job["finish_reason"]


def test_a_chat_stream_joins_to_the_jobs_output(stack: Stack, client: openai.OpenAI, http: httpx.Client) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=stack.info["model"], messages=MESSAGES, max_tokens=16, stream=True, stream_options={"include_usage": True})
    job_id = raw.headers["llmq-job-id"]
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    job = _job(stack, http, job_id)
    assert text == job["output"] and finishes == [job["finish_reason"]]
    assert all(c.object == "chat.completion.chunk" and c.id == job_id for c in chunks)


def test_completions_answer_and_stream(stack: Stack, client: openai.OpenAI, http: httpx.Client) -> None:
    completion = client.completions.create(model=stack.info["model"], prompt="Once upon a time", max_tokens=8)
    assert completion.object == "text_completion" and completion.choices[0].text
    assert completion.usage is not None and completion.usage.total_tokens > 0
    raw = client.completions.with_raw_response.create(model=stack.info["model"], prompt="Once upon a time", max_tokens=8, stream=True)
    job_id = raw.headers["llmq-job-id"]
    chunks = list(raw.parse())
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == _job(stack, http, job_id)["output"]
    assert chunks[-1].choices[0].finish_reason


def test_errors_are_the_sdks_exceptions(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=stack.info["model"], messages=MESSAGES, max_tokens=8, n=2)
    assert bad.value.param == "n"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=stack.info["model"], prompt="", max_tokens=8)  # empty prompt
    with openai.OpenAI(base_url=_base(stack) + "/v1", api_key="llmq_not-a-key", max_retries=0) as stranger, \
            pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model=stack.info["model"], messages=MESSAGES, max_tokens=8)


def test_a_stream_whose_client_leaves_cancels_its_job(stack: Stack, http: httpx.Client) -> None:
    body = {"messages": MESSAGES, "max_tokens": 2000, "stream": True}
    with http.stream("POST", f"{stack.info['completions_url']}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        job_id = response.headers["llmq-job-id"]
        next(response.iter_lines())  # the role chunk: the stream is open
    # The function notices at its next write (a chunk or, at the latest, the 5 s heartbeat).
    deadline = time.monotonic() + 60
    while (job := _job(stack, http, job_id))["status"] not in ("cancelled", "succeeded") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job["status"] == "cancelled", job
    assert job["usage"] is None or job["usage"]["completion_tokens"] < 2000
