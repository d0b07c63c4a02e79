"""Fast tier: one job's trace from submit through the runner's push (Starlette's TestClient over in-memory
ports), the runner's Prometheus metrics read back from GET /metrics, the trace fields on the log lines, and the
pure parts of `scripts.trace` and `scripts.top` (span files, waterfall, histogram quantiles)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from jobs import lifecycle, tracing
from jobs.adapters.batch_launcher import batch_args
from jobs.deadletters import DELIVERY_COUNT_ATTRIBUTE, handle_dead_letter
from jobs.logs import JsonFormatter
from jobs.models import JobMessage
from jobs.push import PushEnvelope
from runner.batch import run_batch
from runner.batch_settings import BatchSettings
from scripts import top
from scripts import trace as trace_script
from tests.memory import InMemoryEngine
from tests.test_runner_fast import Runner, runner  # noqa: F401  (the fixture: a runner over in-memory ports)

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def exported() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (as a deployable installs it) with the SDK's in-memory exporter added."""
    tracing.configure_tracing("fast-tests", exporter="none")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture()
def json_logs() -> Iterator[io.StringIO]:
    """The root logger's lines as the deployables write them (formatted when emitted, inside the span)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def push(runner: Runner, message: JobMessage) -> int:  # noqa: F811
    """Deliver the message as Pub/Sub pushes it: its attributes (the traceparent among them) and publishTime."""
    envelope = {"message": {"data": base64.b64encode(message.model_dump_json().encode()).decode(),
                            "attributes": message.attributes(), "messageId": "1",
                            "publishTime": datetime.now(UTC).isoformat()},
                "subscription": "s"}
    return int(runner.client.post("/push", content=json.dumps(envelope)).status_code)


def metric(text: str, name: str, **labels: str) -> float:
    scrape = top.Scrape.parse(text, 0)
    return scrape.value(name, **labels)


def test_one_trace_from_submit_to_finish_and_the_metrics_move(
        runner: Runner, exported: InMemorySpanExporter, json_logs: io.StringIO) -> None:  # noqa: F811
    before = runner.client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    message = runner.submit()
    record = runner.store.get(message.job_id)
    assert record is not None and record.trace_id is not None and HEX32.match(record.trace_id)
    assert record.view().trace_id == record.trace_id
    assert message.attributes()["traceparent"].split("-")[1] == record.trace_id
    assert "traceparent" not in message.model_dump_json()  # in the attributes, not the body

    assert push(runner, message) == 200

    spans = [s for s in exported.get_finished_spans() if s.context.trace_id == int(record.trace_id, 16)]
    names = [s.name for s in spans]
    for hop in ("submit", "publish", "queue", "push", "claim", "generate", "result_write", "finish"):
        assert hop in names, f"{hop} missing from {names}"
    by_name = {s.name: s for s in spans}
    assert by_name["push"].parent is not None and by_name["push"].parent.span_id == by_name["publish"].context.span_id
    assert by_name["claim"].parent.span_id == by_name["push"].context.span_id  # type: ignore[union-attr]
    assert [e.name for e in by_name["generate"].events] == ["first_token"]
    assert by_name["generate"].attributes["llmq.completion_tokens"] == 4  # type: ignore[index]
    assert by_name["push"].attributes["llmq.outcome"] == "succeeded"  # type: ignore[index]

    after = runner.client.get("/metrics").text
    b = before.text
    assert metric(after, "llmq_jobs_finished_total", outcome="succeeded") == \
        metric(b, "llmq_jobs_finished_total", outcome="succeeded") + 1
    assert metric(after, "llmq_push_answers_total", code="200") == metric(b, "llmq_push_answers_total", code="200") + 1
    for histogram in ("llmq_queue_wait_seconds", "llmq_time_to_first_token_seconds", "llmq_generation_seconds",
                      "llmq_tokens_per_second", "llmq_job_latency_seconds"):
        assert metric(after, f"{histogram}_count") == metric(b, f"{histogram}_count") + 1, histogram
    assert metric(after, "llmq_inflight") == 0

    # Every line the runner logged about the job names its trace and the span it was written in.
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    job_lines = [line for line in lines if line.get("job_id") == message.job_id]
    assert {line["message"] for line in job_lines} >= {"claimed", "finished", "push answered"}
    span_ids = {trace.format_span_id(s.context.span_id) for s in spans}
    for line in job_lines:
        assert line["logging.googleapis.com/trace"] == f"projects/local-project/traces/{record.trace_id}", line
        assert line["logging.googleapis.com/spanId"] in span_ids, line


def test_push_answers_are_counted_by_status(runner: Runner, exported: InMemorySpanExporter) -> None:  # noqa: F811
    message = runner.submit()
    now = datetime.now(UTC)
    # Another live delivery holds the job: this one is answered 429 (redeliver later).
    runner.store.update(message.job_id, lambda current: lifecycle.decide_claim(
        current, owner="delivery-other", instance="runner-other", now=now, lease_seconds=30).record)
    before = runner.client.get("/metrics").text
    assert push(runner, message) == 429
    assert runner.client.post("/push", content=b"not an envelope").status_code == 400
    after = runner.client.get("/metrics").text
    for code in ("429", "400"):
        assert metric(after, "llmq_push_answers_total", code=code) == \
            metric(before, "llmq_push_answers_total", code=code) + 1, code
    push_span = [s for s in exported.get_finished_spans() if s.name == "push"][-1]
    assert push_span.attributes["llmq.outcome"] == "held by another delivery"  # type: ignore[index]


def test_span_files_render_as_a_waterfall(tmp_path: Path) -> None:
    provider = TracerProvider()  # a provider of its own, exporting through the file exporter the stack uses
    provider.add_span_processor(SimpleSpanProcessor(tracing.JsonLinesSpanExporter(tmp_path / "a-1.jsonl")))
    tracer = provider.get_tracer("test")
    with (tracer.start_as_current_span("submit", attributes={tracing.JOB_ID: "job_x"}),
          tracer.start_as_current_span("publish")):
        carrier = tracing.inject()
    other = TracerProvider()
    other.add_span_processor(SimpleSpanProcessor(tracing.JsonLinesSpanExporter(tmp_path / "b-2.jsonl")))
    with (other.get_tracer("test").start_as_current_span("push", context=tracing.extract(carrier)),
          other.get_tracer("test").start_as_current_span("generate") as span):
        span.add_event("first_token")
    with tracer.start_as_current_span("unrelated"):
        pass
    with (tmp_path / "b-2.jsonl").open("a") as torn:
        torn.write('{"torn')  # a line still being written is skipped

    spans = trace_script.job_trace(trace_script.read_spans(tmp_path), "job_x")
    assert [s["name"] for s in spans] == ["submit", "publish", "push", "generate"]
    assert len({s["trace_id"] for s in spans}) == 1
    roots = trace_script.tree(spans)
    assert [r.record["name"] for r in roots] == ["submit"]
    assert [c.record["name"] for c in roots[0].children[0].children] == ["push"]
    console = Console(width=160, record=True)
    console.print(trace_script.waterfall(spans, "job_x"))
    text = console.export_text()
    assert text.index("submit") < text.index("publish") < text.index("push") < text.index("generate")
    assert "◆ first_token" in text and spans[0]["trace_id"] in text


def test_histogram_quantiles_as_prometheus_computes_them() -> None:
    buckets = [(0.1, 0.0), (0.5, 50.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert top.quantile(0.5, buckets) == pytest.approx(0.5)
    assert top.quantile(0.25, buckets) == pytest.approx(0.3)
    assert top.quantile(0.99, buckets) == pytest.approx(0.99)
    assert top.quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    assert top.quantile(0.99, [(1.0, 1.0), (float("inf"), 10.0)]) == 1.0


def test_a_batch_run_is_one_span_per_file_with_its_line_counts(
        tmp_path: Path, exported: InMemorySpanExporter) -> None:
    good = {"method": "POST", "url": "/v1/completions", "body": {"prompt": "two words", "max_tokens": 3}}
    lines = [json.dumps({"custom_id": f"c{i}", **good}) for i in range(3)] + ["not json"]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    # As the submit function launches it: the runner's arguments carry the launching span's context.
    with tracing.tracer().start_as_current_span("launch_batch") as launch:
        args = batch_args(batch_id="batch_x", input_uri=str(tmp_path / "in.jsonl"), output_prefix="out")
    traceparent = args[args.index("--traceparent") + 1]
    outcome = asyncio.run(run_batch(BatchSettings(model_name="tiny-llama"), input_uri=str(tmp_path / "in.jsonl"),
                                    output_prefix=str(tmp_path / "out"), engine=InMemoryEngine(),
                                    traceparent=traceparent))
    assert (outcome.counts.total, outcome.counts.completed, outcome.counts.failed) == (4, 3, 1)
    (span,) = [s for s in exported.get_finished_spans()
               if s.name == "batch" and s.attributes["llmq.input_uri"] == str(tmp_path / "in.jsonl")]  # type: ignore[index]
    assert {k: span.attributes[k] for k in ("llmq.lines.total", "llmq.lines.completed",  # type: ignore[index]
                                            "llmq.lines.failed", "llmq.outcome")} == {
        "llmq.lines.total": 4, "llmq.lines.completed": 3, "llmq.lines.failed": 1, "llmq.outcome": "completed"}
    assert span.context.trace_id == launch.get_span_context().trace_id
    assert span.parent is not None and span.parent.span_id == launch.get_span_context().span_id


def test_a_dead_letter_ends_the_jobs_trace(runner: Runner, exported: InMemorySpanExporter) -> None:  # noqa: F811
    message = runner.submit()
    record = runner.store.get(message.job_id)
    assert record is not None and record.trace_id is not None
    envelope = PushEnvelope.model_validate({"message": {
        "data": base64.b64encode(message.model_dump_json().encode()).decode(),
        "attributes": {**message.attributes(), DELIVERY_COUNT_ATTRIBUTE: "15"}}})
    assert handle_dead_letter(runner.store, envelope, now=datetime.now(UTC)) == "marked dead_lettered"
    (span,) = [s for s in exported.get_finished_spans()
               if s.name == "dead_letter" and s.attributes[tracing.JOB_ID] == message.job_id]  # type: ignore[index]
    assert trace.format_trace_id(span.context.trace_id) == record.trace_id
    assert span.attributes["llmq.outcome"] == "marked dead_lettered"  # type: ignore[index]
