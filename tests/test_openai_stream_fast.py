"""Fast tier: OpenAI's chat and completion answers built from job views (jobs/openai_stream.py), and the
completions function through functions-framework's test client over in-memory ports, with a thread standing in
for the runner."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from jobs.adapters import wiring
from jobs.auth import ApiKey, hash_key, new_key
from jobs.models import JobErrorCode, JobErrorInfo, JobRecord, JobView, Usage
from jobs.openai_stream import DONE, StreamHead, job_error, response_object, step
from jobs.state import JobStatus
from tests.memory import (
    InMemoryApiKeyStore,
    InMemoryJobStore,
    api_ports,
)

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 1, 1, tzinfo=UTC)
USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)


def view(status: JobStatus = JobStatus.RUNNING, output: str | None = None, **fields: Any) -> JobView:
    return JobView(id="job-1", status=status, model="tiny", priority="interactive", created_at=NOW, started_at=None,
                   finished_at=None, expire_at=NOW + timedelta(days=1), attempts=1, output=output,
                   finish_reason=fields.pop("finish_reason", None), usage=fields.pop("usage", None), result_uri=None,
                   error=fields.pop("error", None), metadata={}, metrics={})


def data(events: list[str]) -> list[Any]:
    return [json.loads(e[len("data: "):]) if e != DONE else "[DONE]" for e in events]


def test_chat_stream_sends_the_role_then_deltas_then_finish_and_usage() -> None:
    head = StreamHead.of("chat", view(), include_usage=True)
    (opening,) = data(head.opening())
    assert opening["object"] == "chat.completion.chunk" and opening["choices"][0]["delta"]["role"] == "assistant"
    first = step(head, "", view(output="Hel"))
    assert [c["choices"][0]["delta"] for c in data(first.events)] == [{"content": "Hel"}] and not first.done
    assert step(head, first.sent, view(output="Hel")).events == []
    last = step(head, first.sent, view(JobStatus.SUCCEEDED, "Hello", finish_reason="length", usage=USAGE))
    delta, final, usage, done = data(last.events)
    assert delta["choices"][0]["delta"] == {"content": "lo"}
    assert final["choices"][0]["finish_reason"] == "length" and final["usage"] is None
    assert usage["choices"] == [] and usage["usage"] == USAGE.model_dump() and done == "[DONE]" and last.done


def test_completion_stream_has_text_deltas_and_no_role() -> None:
    head = StreamHead.of("completion", view(), include_usage=False)
    assert head.opening() == []
    out = step(head, "", view(JobStatus.SUCCEEDED, "abc", finish_reason="stop", usage=USAGE))
    chunk, final, done = data(out.events)
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "abc" and "usage" not in chunk
    assert final["choices"][0]["finish_reason"] == "stop" and done == "[DONE]"


def test_a_regenerating_takeover_waits_and_a_contradiction_ends_the_stream() -> None:
    head = StreamHead.of("chat", view(), include_usage=False)
    assert step(head, "Hello", view(output="He")).events == []  # a new runner catching up
    ended = step(head, "Hello", view(output="Bye"))
    error, done = data(ended.events)
    assert error["error"]["code"] == "stream_diverged" and done == "[DONE]" and ended.done


def test_a_job_failing_mid_stream_ends_with_an_error_event() -> None:
    head = StreamHead.of("chat", view(), include_usage=False)
    failed = view(JobStatus.FAILED, "par", error=JobErrorInfo(code=JobErrorCode.DEAD_LETTERED, message="gone"))
    delta, error, done = data(step(head, "", failed).events)
    assert delta["choices"][0]["delta"] == {"content": "par"}
    assert error["error"]["code"] == "dead_lettered" and done == "[DONE]"


def test_job_errors_map_to_openai_statuses() -> None:
    def status(code: str, job_status: JobStatus = JobStatus.FAILED) -> int:
        return job_error(view(job_status, error=JobErrorInfo(code=code, message="m"))).status

    assert status("context_length_exceeded") == 400
    assert status("rejected_by_engine") == 400
    assert status("deadline_exceeded", JobStatus.CANCELLED) == 504
    assert status("dead_lettered") == 503
    assert status("invalid_message") == 500
    assert job_error(view(JobStatus.CANCELLED)).status == 409


def test_response_object_is_the_result_the_runner_writes() -> None:
    body = response_object("chat", view(JobStatus.SUCCEEDED, "hi", finish_reason="stop", usage=USAGE))
    assert body["object"] == "chat.completion" and body["id"] == "job-1" and body["model"] == "tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert body["usage"] == USAGE.model_dump()


# --- the function, over in-memory ports --------------------------------------------------------------------


class Api:
    def __init__(self) -> None:
        self.key = new_key()
        self.store = InMemoryJobStore()
        keys = InMemoryApiKeyStore(ApiKey(key_hash=hash_key(self.key), tenant="acme", name="t", created_at=NOW))
        wiring.use_ports(api_ports(jobs=self.store, api_keys=keys))
        app = functions_framework.create_app(target="completions",
                                             source=str(REPO / "functions" / "completions" / "main.py"))
        self.client = app.test_client()
        self.auth = {"Authorization": f"Bearer {self.key}"}

    def run_job(self, words: list[str], *, pause: float = 0.05) -> threading.Thread:
        """A stand-in runner: takes the first job it sees, streams its words into the document, finishes it."""

        def mutate(record: JobRecord, **update: Any) -> JobRecord | None:
            return None if record.status.is_final else record.model_copy(update=update)

        def work() -> None:
            while not self.store.records:
                time.sleep(0.01)
            (job_id,) = self.store.records
            self.store.update(job_id, lambda r: mutate(r, status=JobStatus.RUNNING))
            text = ""
            for word in words:
                time.sleep(pause)
                text += word
                self.store.update(job_id, lambda r: mutate(r, output=text))  # noqa: B023 (applied at once)
            self.store.update(job_id, lambda r: mutate(r, status=JobStatus.SUCCEEDED, finish_reason="stop",
                                                      usage=USAGE))

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread


@pytest.fixture()
def api() -> Iterator[Api]:
    yield Api()
    wiring.use_ports(None)


def test_chat_completion_waits_for_the_job_and_names_it(api: Api) -> None:
    runner = api.run_job(["Hi", " there"])
    answer = api.client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                           "priority": "batch"}, headers=api.auth)
    runner.join()
    assert answer.status_code == 200, answer.text
    body = answer.get_json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "Hi there"
    assert answer.headers["llmq-job-id"] == body["id"]
    assert api.store.records[body["id"]].priority == "interactive"


def test_the_route_must_match_the_body(api: Api) -> None:
    answer = api.client.post("/v1/completions", json={"messages": [{"role": "user", "content": "x"}]},
                             headers=api.auth)
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "url_body_mismatch"
    assert not api.store.records
    assert api.client.post("/v1/chat/completions", json={"prompt": "x"}, headers={}).status_code == 401


def test_a_job_past_the_timeout_is_cancelled_with_a_504(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.settings import api_settings

    monkeypatch.setattr(api_settings(), "completion_timeout_seconds", 0.2)
    answer = api.client.post("/v1/completions", json={"prompt": "x"}, headers=api.auth)
    assert answer.status_code == 504 and answer.get_json()["error"]["type"] == "api_error"
    job_id = answer.headers["llmq-job-id"]
    assert job_id in answer.get_json()["error"]["message"]
    assert api.store.records[job_id].status is JobStatus.CANCELLED


def test_a_stream_follows_the_document_and_ends_with_done(api: Api) -> None:
    runner = api.run_job(["a", "b", "c"])
    answer = api.client.post("/v1/chat/completions", headers=api.auth, json={
        "messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": {"include_usage": True}})
    text = answer.get_data(as_text=True)
    runner.join()
    assert answer.mimetype == "text/event-stream" and answer.headers["llmq-job-id"]
    events = [e for e in text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    joined = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert joined == "abc" and chunks[-1]["usage"] == USAGE.model_dump()


def test_a_stream_whose_client_leaves_cancels_its_job(api: Api) -> None:
    answer = api.client.post("/v1/completions", headers=api.auth, json={"prompt": "x", "stream": True},
                             buffered=False)
    stream = iter(answer.response)
    (job_id,) = api.store.records
    api.store.update(job_id, lambda r: r.model_copy(update={"status": JobStatus.RUNNING, "output": "par"}))
    assert any(b"par" in next(stream) for _ in range(3))
    answer.close()  # the client goes away: the generator is closed
    assert api.store.records[job_id].status is JobStatus.CANCELLED
