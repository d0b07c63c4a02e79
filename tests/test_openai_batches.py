"""OpenAI's Files and Batch APIs on the local stack, driven by OpenAI's own SDK exactly as OpenAI documents the
flow (files.create → batches.create → batches.retrieve until done → files.content), at the stack's one URL;
and the SDK's exception classes for llmq's errors, its own retry honouring Retry-After included."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from jobs.adapters.api_key_store import FirestoreApiKeyStore
from scripts.api_keys import create_key
from scripts.stack_client import Stack
from tests.batch_helpers import OPENAI_EXAMPLE, completion_line, jsonl
from tests.faults import extra_function

pytestmark = pytest.mark.timeout(420)
FINAL = {"completed", "failed", "expired", "cancelled"}


def _sdk(base: str, key: str, *, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=max_retries, timeout=120)


@pytest.fixture()
def tenant_key(db: Any) -> str:
    """A tenant of the test's own: its files and batches are the only ones it lists."""
    return create_key(FirestoreApiKeyStore(db), tenant=f"sdk-{uuid.uuid4().hex[:8]}", name="openai-sdk")


@pytest.fixture()
def client(stack: Stack, tenant_key: str) -> Iterator[openai.OpenAI]:
    with _sdk(str(stack.info["api_url"]), tenant_key) as sdk:
        yield sdk


def _until_final(client: openai.OpenAI, batch_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        time.sleep(1)  # OpenAI's documented way is polling retrieve; its progress is a listener away too
    raise AssertionError(f"batch {batch_id} not final within {timeout}s")


def test_openais_documented_batch_flow_runs_unchanged(client: openai.OpenAI, tmp_path: Path) -> None:
    # OpenAI's own two-line example (its model name aliased by the stack), a line without a body, and a
    # custom_id seen before: two results, two error lines.
    path = tmp_path / "batchinput.jsonl"
    path.write_text(OPENAI_EXAMPLE + '{"custom_id": "request-3", "method": "POST", "url": "/v1/chat/completions"}\n'
                    + OPENAI_EXAMPLE.splitlines()[0] + "\n")
    with path.open("rb") as f:
        batch_input_file = client.files.create(file=f, purpose="batch")
    assert batch_input_file.purpose == "batch" and batch_input_file.bytes == path.stat().st_size
    assert batch_input_file.filename == "batchinput.jsonl"
    batch = client.batches.create(input_file_id=batch_input_file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"description": "nightly eval job"})
    assert batch.status == "validating" and batch.input_file_id == batch_input_file.id
    assert batch.expires_at == batch.created_at + 86400 and batch.metadata == {"description": "nightly eval job"}

    done = _until_final(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 2, 2)
    assert done.completed_at is not None and done.in_progress_at is not None and done.finalizing_at is not None
    assert done.usage is not None and done.usage.output_tokens > 0
    assert done.output_file_id is not None and done.error_file_id is not None

    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["request-1", "request-2"]  # each exactly once
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)
    assert {line["response"]["body"]["object"] for line in output} == {"chat.completion"}
    assert sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output) == done.usage.output_tokens
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert [(e["custom_id"], e["error"]["code"], e["error"]["line"]) for e in errors] == [
        ("request-3", "invalid_line", 3), ("request-1", "duplicate_custom_id", 4)]

    # The outputs are the tenant's files too; the input can be listed, read back and deleted.
    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output" and output_file.bytes == len(client.files.content(output_file.id).content)
    assert {f.id for f in client.files.list(purpose="batch")} == {batch_input_file.id}
    assert client.files.content(batch_input_file.id).content == path.read_bytes()
    deleted = client.files.delete(batch_input_file.id)
    assert deleted.deleted is True and deleted.id == batch_input_file.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(batch_input_file.id)


def test_batches_page_newest_first_and_cancel(client: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl([completion_line(f"c{i}", f"Prompt {i}", max_tokens=4) for i in range(3)]))
    with path.open("rb") as f:
        file_id = client.files.create(file=f, purpose="batch").id
    created = []
    for _ in range(3):  # each cancelled at once: its runner ends it without loading the model
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/completions", completion_window="24h")
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
        created.append(batch.id)
    # The SDK's own auto-paging, one batch a page (`after` = the last id of the page before).
    assert [b.id for b in client.batches.list(limit=1)] == created[::-1]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == created[:0:-1] and page.has_more is True
    for batch_id in created:
        ended = _until_final(client, batch_id, timeout=240)
        assert ended.status == "cancelled" and ended.cancelled_at is not None, ended


def test_the_sdks_exceptions_carry_llmqs_errors(stack: Stack, client: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(jsonl([completion_line("a", "x")]))
    with path.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=f, purpose="fine-tune")  # refused by name
    assert bad.value.param == "purpose" and bad.value.code == "invalid_request"
    with pytest.raises(openai.BadRequestError) as no_endpoint:
        client.batches.create(input_file_id="file-nothere", endpoint="/v1/embeddings", completion_window="24h")
    assert no_endpoint.value.param == "endpoint"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 32)
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-" + "0" * 32)
    with _sdk(str(stack.info["api_url"]), "llmq_not-a-key") as stranger, pytest.raises(openai.AuthenticationError):
        stranger.files.list()
    key = {"Idempotency-Key": f"sdk-{uuid.uuid4().hex}"}
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model=stack.info["model"], messages=messages, max_tokens=2, extra_headers=key)
    with pytest.raises(openai.ConflictError) as conflict:  # the same key with another body
        client.chat.completions.create(model=stack.info["model"], messages=messages, max_tokens=3, extra_headers=key)
    assert conflict.value.code == "idempotency_key_reused"


def test_a_429_is_the_sdks_rate_limit_error_after_its_retry_waited_retry_after(
        stack: Stack, tenant_key: str, tmp_path: Path) -> None:
    # A completions instance of its own with a quota of one submission a minute (llmq answers Retry-After: 10).
    with (extra_function(stack, "completions", tmp_path, quota_submissions_per_minute="1") as url,
          _sdk(url, tenant_key, max_retries=1) as sdk):
        sdk.completions.create(model=stack.info["model"], prompt="x", max_tokens=1)
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as limited:
            sdk.completions.create(model=stack.info["model"], prompt="y", max_tokens=1)
        waited = time.monotonic() - started
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "10"
    # One retry, after the server's Retry-After (the SDK's own backoff would be under 10 s).
    assert 10 <= waited < 40, waited
