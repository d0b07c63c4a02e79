"""Integration: one job followed through the real local stack — its spans from the submit function and the
runner share the trace id on its document, the runner's /metrics move, the runner's log lines about it carry
the trace and span ids, and `scripts.trace` / `scripts.top` render against the stack — and one batch file,
whose run is a span with its line counts in the trace of the request that started it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from scripts import top
from scripts import trace as trace_script
from scripts.stack_client import Stack
from tests.batch_helpers import completion_line, jsonl

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _scrape(http: httpx.Client, stack: Stack) -> top.Scrape:
    return top.scrape(http, stack.info["metrics_url"])


def _wait_for(what: str, probe: Any, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
    return found


def test_a_job_explains_itself(stack: Stack, http: httpx.Client) -> None:
    before = _scrape(http, stack)
    submitted = stack.submit(http, {"prompt": "trace me", "max_tokens": 6})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    job = http.get(f"{stack.info['status_url']}/v1/jobs/{job_id}", params={"wait": 50}).json()
    assert job["status"] == "succeeded", job
    trace_id = job["trace_id"]
    assert HEX32.match(trace_id) and submitted.json()["trace_id"] == trace_id

    # The spans of every process (flushed about once a second) share the job's trace id.
    traces = Path(stack.info["traces"])

    def whole_trace() -> list[dict[str, Any]]:
        spans = trace_script.job_trace(trace_script.read_spans(traces), job_id)
        return spans if {"POST /v1/jobs", "finish"} <= {s["name"] for s in spans} else []

    spans = _wait_for("the job's spans", whole_trace)
    assert {s["trace_id"] for s in spans} == {trace_id}
    by_service: dict[str, set[str]] = {}
    for s in spans:
        by_service.setdefault(s["service"], set()).add(s["name"])
    assert by_service["submit"] >= {"POST /v1/jobs", "submit", "publish"}
    assert by_service["runner"] >= {"queue", "push", "claim", "generate", "result_write", "finish"}
    generate = next(s for s in spans if s["name"] == "generate")
    assert [e["name"] for e in generate["events"]] == ["first_token"]

    # The runner's metrics moved with it.
    after = _scrape(http, stack)
    assert after.value("llmq_jobs_finished_total", outcome="succeeded") >= \
        before.value("llmq_jobs_finished_total", outcome="succeeded") + 1
    for histogram in ("llmq_queue_wait_seconds", "llmq_time_to_first_token_seconds", "llmq_generation_seconds",
                      "llmq_job_latency_seconds"):
        assert after.value(f"{histogram}_count") >= before.value(f"{histogram}_count") + 1, histogram
    assert after.total("llmq_push_answers_total") >= before.total("llmq_push_answers_total") + 1

    # Each runner log line about the job names its trace and one of its spans.
    span_ids = {s["span_id"] for s in spans}
    runner_log = Path(stack.info["logs"]) / "runner.log"
    lines = [json.loads(line) for line in runner_log.read_text().splitlines() if job_id in line and line.startswith("{")]
    assert {line["message"] for line in lines} >= {"claimed", "finished", "push answered"}
    for line in lines:
        assert line["logging.googleapis.com/trace"] == f"projects/{stack.project}/traces/{trace_id}", line
        assert line["logging.googleapis.com/spanId"] in span_ids, line
    submit_log = Path(stack.info["logs"]) / "submit.log"
    submission = [json.loads(line) for line in submit_log.read_text().splitlines()
                  if job_id in line and line.startswith("{")]
    assert [(s["message"], s["outcome"]) for s in submission] == [("submission", "created")]
    assert submission[0]["logging.googleapis.com/trace"].endswith(trace_id)

    # `llmq trace` and `llmq top` render against the stack (the CLI, as its own process, runs the scripts).
    state_dir = ["--state-dir", str(stack.state_dir)]
    waterfall = subprocess.run([sys.executable, "-m", "llmq", "trace", job_id, *state_dir], cwd=REPO,
                               capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert waterfall.returncode == 0, waterfall.stderr
    assert trace_id in waterfall.stdout and "◆ first_token" in waterfall.stdout
    hops = ["POST /v1/jobs", "publish", "push", "claim", "generate", "result_write", "finish"]
    assert sorted(hops, key=waterfall.stdout.index) == hops  # in the order they happened
    view = subprocess.run([sys.executable, "-m", "llmq", "top", "--once", "--interval", "0.5", *state_dir],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert view.returncode == 0, view.stderr
    for heading in ("queued", "running", "dead letters", stack.info["metrics_url"], "p99 latency"):
        assert heading in view.stdout, view.stdout


def test_a_batch_file_is_one_span_in_the_trace_of_its_request(stack: Stack, http: httpx.Client) -> None:
    lines: list[dict[str, Any] | str] = [completion_line("a", "One"), completion_line("b", "Two"), "not json"]
    response = http.post(f"{stack.info['submit_url']}/v1/batches", json={"input_jsonl": jsonl(lines)})
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    traces = Path(stack.info["traces"])

    def batch_trace() -> list[dict[str, Any]]:
        spans = trace_script.job_trace(trace_script.read_spans(traces), batch_id)
        return spans if {"launch_batch", "batch"} <= {s["name"] for s in spans} else []

    spans = _wait_for("the batch's spans", batch_trace, timeout=240)  # the batch runner loads a model first
    assert len({s["trace_id"] for s in spans}) == 1
    launch = next(s for s in spans if s["name"] == "launch_batch")
    run = next(s for s in spans if s["name"] == "batch")
    assert (launch["service"], run["service"], run["parent_id"]) == ("submit", "batch", launch["span_id"])
    assert {k: run["attributes"][k] for k in ("llmq.lines.total", "llmq.lines.completed", "llmq.lines.failed")} == {
        "llmq.lines.total": 3, "llmq.lines.completed": 2, "llmq.lines.failed": 1}
