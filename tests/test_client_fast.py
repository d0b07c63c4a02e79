"""The client's own logic, without the stack: retries that honour Retry-After and the error families
against a real local HTTP server that answers what the test scripts (a stand-in for the API, named as
such: it serves only the answers below), configuration lookup, and `llmq run`'s file handling."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import llmq
from llmq import runfile
from llmq.config import resolve

JOB: dict[str, Any] = {"object": "job", "id": "job_1", "status": "queued", "model": "m", "priority": "interactive",
       "created_at": "2026-01-01T00:00:00Z", "started_at": None, "finished_at": None, "attempts": 0, "output": None,
       "finish_reason": None, "usage": None, "result_uri": None, "error": None, "metadata": {}, "metrics": {}}


class ScriptedServer:
    """Answers each request with the next (status, headers, body) of its script, and records the requests."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, str, dict[str, str], float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append((self.command, self.path, dict(self.headers), time.monotonic()))
                status, headers, body = outer.script.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # a keep-alive connection's handler must not hold up close()
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture()
def scripted() -> Iterator[list[ScriptedServer]]:
    servers: list[ScriptedServer] = []
    yield servers
    for server in servers:
        server.close()


def _error(code: str, message: str = "m", details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or [], "type": "t", "param": None}}


def test_a_429_is_retried_after_its_retry_after_with_the_same_idempotency_key(scripted: list[ScriptedServer]) -> None:
    server = ScriptedServer([(429, {"Retry-After": "1"}, _error("quota_exceeded")), (202, {}, JOB)])
    scripted.append(server)
    with llmq.Client(server.url, "k") as client:
        job = client.submit("hi", max_tokens=4)
    assert job.id == "job_1" and job.status == "queued"
    (_, _, first, t0), (_, _, second, t1) = server.requests
    assert t1 - t0 >= 0.95
    assert first["Idempotency-Key"] == second["Idempotency-Key"] and first["Authorization"] == "Bearer k"


def test_async_client_retries_the_same_way(scripted: list[ScriptedServer]) -> None:
    server = ScriptedServer([(503, {"Retry-After": "1"}, _error("unavailable")), (202, {}, JOB)])
    scripted.append(server)

    async def go() -> llmq.Job:
        async with llmq.AsyncClient(server.url, "k") as client:
            return await client.submit(messages=[{"role": "user", "content": "hi"}])

    assert asyncio.run(go()).id == "job_1"
    assert server.requests[1][3] - server.requests[0][3] >= 0.95


@pytest.mark.parametrize(("status", "cls"), [
    (400, llmq.BadRequestError), (401, llmq.AuthenticationError), (404, llmq.NotFoundError),
    (409, llmq.ConflictError), (429, llmq.RateLimitError), (503, llmq.ServiceUnavailableError),
])
def test_each_error_family_carries_the_servers_code_and_details(scripted: list[ScriptedServer], status: int,
                                                                cls: type[llmq.APIStatusError]) -> None:
    details = [{"field": "max_tokens", "code": "too_big", "message": "at most 8"}]
    server = ScriptedServer([(status, {"Retry-After": "7"}, _error("some_code", "said the server", details))])
    scripted.append(server)
    with llmq.Client(server.url, "k", max_retries=0) as client, pytest.raises(cls) as raised:
        client.get("job_1")
    err = raised.value
    assert (err.status_code, err.code, err.message, err.details) == (status, "some_code", "said the server", details)
    assert err.retry_after == 7


def test_configuration_comes_from_arguments_then_environment_then_stack_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLMQ_BASE_URL", "LLMQ_API_KEY", "LLMQ_STACK_JSON", "LLMQ_FIRESTORE_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(llmq.ConfigurationError):
        resolve()
    stack = tmp_path / ".local" / "stack.json"
    stack.parent.mkdir()
    stack.write_text(json.dumps({"api_url": "http://127.0.0.1:1/", "api_key": "from-stack", "project": "p",
                                 "env": {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:2"}}))
    config = resolve()
    assert (config.base_url, config.api_key) == ("http://127.0.0.1:1", "from-stack")
    assert config.firestore is not None and config.firestore.emulator_host == "127.0.0.1:2"
    monkeypatch.setenv("LLMQ_BASE_URL", "http://example.invalid")
    monkeypatch.setenv("LLMQ_API_KEY", "from-env")
    config = resolve()
    assert (config.base_url, config.api_key, config.firestore) == ("http://example.invalid", "from-env", None)
    assert resolve("http://a.invalid", "arg").api_key == "arg"


def test_run_reads_every_line_shape_and_derives_stable_keys(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("plain prompt\n\n"
                      '{"prompt": "p", "custom_id": "a"}\n'
                      '{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", '
                      '"body": {"messages": [{"role": "user", "content": "c"}], "max_tokens": 2}}\n')
    lines = runfile.read_input(source, {"max_tokens": 4})
    assert [(line.number, line.custom_id) for line in lines] == [(1, "line-1"), (3, "a"), (4, "b")]
    assert lines[0].body == {"max_tokens": 4, "messages": [{"role": "user", "content": "plain prompt"}]}
    assert lines[2].body["max_tokens"] == 2  # the line's own value wins over the default
    again = runfile.read_input(source, {"max_tokens": 4})
    assert [line.idempotency_key for line in again] == [line.idempotency_key for line in lines]
    changed = runfile.read_input(source, {"max_tokens": 5})
    assert changed[0].idempotency_key != lines[0].idempotency_key  # another body is another job
    source.write_text('{"prompt": "p", "custom_id": "a"}\n{"prompt": "q", "custom_id": "a"}\n')
    with pytest.raises(runfile.InputError, match="twice"):
        runfile.read_input(source, {})


def test_run_output_skips_written_lines_and_cuts_a_torn_one(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert runfile.done_ids(out) == set()
    out.write_text('{"custom_id": "a"}\n{"custom_id": "b"}\n{"custom_id": "c", "outp')
    assert runfile.done_ids(out) == {"a", "b"}
    assert out.read_text() == '{"custom_id": "a"}\n{"custom_id": "b"}\n'


def test_the_client_package_imports_nothing_of_the_platform() -> None:
    """A client installed elsewhere has only llmq/: it must not import jobs/, runner/, functions/, scripts/."""
    import ast

    platform = {"jobs", "runner", "functions", "scripts", "workflows", "pulumi", "tests"}
    for path in Path(llmq.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not {n.split(".")[0] for n in names} & platform, (path.name, names)


def test_map_waits_out_a_quota_for_as_long_as_it_lasts(scripted: list[ScriptedServer]) -> None:
    over = (429, {"Retry-After": "0"}, _error("quota_exceeded"))
    server = ScriptedServer([over, over, over, (202, {}, JOB), (200, {}, {**JOB, "status": "succeeded", "output": "o"})])
    scripted.append(server)
    with llmq.Client(server.url, "k", max_retries=0) as client:
        [result] = list(client.map([{"prompt": "p", "custom_id": "a"}], key_prefix="run-1"))
    assert result.succeeded and result.custom_id == "a" and result.job is not None and result.job.output == "o"
    keys = {headers["Idempotency-Key"] for method, _, headers, _ in server.requests if method == "POST"}
    assert len(keys) == 1 and server.requests[-1][1].startswith("/v1/jobs/job_1?wait=")
