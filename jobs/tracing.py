"""One trace per job, across processes (OpenTelemetry).

submit → publish (the W3C `traceparent` goes into the Pub/Sub message's attributes) → the runner's push
(extracted from the attributes) → claim → generate (first token as an event) → result write → finish.

Where spans go is a setting (`LLMQ_TRACE_EXPORTER`): `gcp` exports to Cloud Trace, `file` appends each
finished span as a JSON line to a file of its own per process under `LLMQ_TRACE_DIR` (the local stack's;
`python -m scripts.trace JOB_ID` reads them), `none` records spans (so trace ids exist and travel) but
exports nothing. Spans always leave through a batch span processor: tracing never adds a network call to a
request.

The propagation is W3C trace context through `opentelemetry.propagate`'s TraceContextTextMapPropagator, not
google-cloud-pubsub's own OpenTelemetry option: that option traces the client's publish and *pull* paths
(its `googclient_`-prefixed attribute), and the runner receives pushes, which no client library reads.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobs import logs

TraceExporter = Literal["none", "file", "gcp"]
JOB_ID = "llmq.job_id"  # the span attribute that names the job (`scripts/trace.py` finds a job's trace by it)
BATCH_ID = "llmq.batch_id"  # ...and the batch, on the span of a batch runner's run over its file

_propagator = TraceContextTextMapPropagator()
_configured = False
_lock = threading.Lock()


def tracer() -> trace.Tracer:
    return trace.get_tracer("llmq")


def configure_tracing(service: str, *, exporter: TraceExporter, directory: str = "", project: str = "") -> None:
    """Install the process's tracer provider once (later calls do nothing), and tell the log formatter the
    project its trace field names."""
    global _configured
    if exporter == "file" and not directory:
        raise ValueError("the file trace exporter needs a directory (LLMQ_TRACE_DIR)")
    with _lock:
        if _configured:
            return
        _configured = True
    logs.set_trace_project(project)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter == "file":
        path = Path(directory) / f"{service}-{os.getpid()}.jsonl"
        # Flushed about once a second, so that `scripts.trace` sees a job's spans soon after it ends.
        provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(path), schedule_delay_millis=1000))
    elif exporter == "gcp":
        from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

        provider.add_span_processor(BatchSpanProcessor(CloudTraceSpanExporter(project_id=project or None)))
    trace.set_tracer_provider(provider)


def inject() -> dict[str, str]:
    """The current trace context as message attributes (`traceparent`, W3C)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


def extract(attributes: Mapping[str, str]) -> otel_context.Context:
    """The context a message's attributes carry (an empty one when they carry none)."""
    return _propagator.extract(dict(attributes))


def continue_trace(trace_id: str | None) -> otel_context.Context:
    """A context in the job's recorded trace, for work that has no message to extract it from (the
    reconciler re-publishing a job): spans started in it join the job's trace."""
    if not trace_id:
        return otel_context.Context()
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    parent = trace.SpanContext(trace_id=int(trace_id, 16), span_id=RandomIdGenerator().generate_span_id(),
                               is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def trace_id_of(span: Span) -> str | None:
    """The span's trace id as 32 hex digits, or None where no tracer provider is installed."""
    context = span.get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


@contextmanager
def job_span(name: str, job_id: str, *, parent: otel_context.Context | None = None,
             kind: SpanKind = SpanKind.INTERNAL, start_time: datetime | None = None,
             attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A span of one job's trace; an exception that leaves it marks it as an error."""
    start = int(start_time.timestamp() * 1e9) if start_time is not None else None
    with tracer().start_as_current_span(name, context=parent, kind=kind, start_time=start,
                                        attributes={JOB_ID: job_id, **(attributes or {})}) as span:
        yield span


def record_outcome(span: Span, outcome: str, *, error: bool = False) -> None:
    span.set_attribute("llmq.outcome", outcome)
    if error:
        span.set_status(Status(StatusCode.ERROR, outcome))


class JsonLinesSpanExporter(SpanExporter):
    """Each finished span as one JSON line, appended to a file this process alone writes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s), separators=(",", ":")) + "\n" for s in spans)
        try:
            with self._lock, self._path.open("a", encoding="utf-8") as out:
                out.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The JSON line of one span: ids in W3C hex, times in Unix nanoseconds."""
    context = span.get_span_context()
    assert context is not None
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
        "parent_id": trace.format_span_id(span.parent.span_id) if span.parent is not None else None,
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "time": e.timestamp, "attributes": dict(e.attributes or {})}
                   for e in span.events],
    }
