"""Structured JSON logs on stdout in Cloud Logging's shape: `severity`, `message`, plus the job id
and, inside a span (jobs/tracing.py), `logging.googleapis.com/trace` and `logging.googleapis.com/spanId`, so
Cloud Logging files each line under its job's trace. Prompts, outputs and keys are never logged."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace

_CONTEXT_FIELDS = ("job_id", "tenant", "delivery", "attempt", "status", "outcome")
_trace_project = "local-project"


def set_trace_project(project: str) -> None:
    """The project whose Cloud Trace the trace field names (jobs.tracing.configure_tracing sets it)."""
    global _trace_project
    _trace_project = project or _trace_project


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["logging.googleapis.com/trace"] = f"projects/{_trace_project}/traces/{trace.format_trace_id(span.trace_id)}"
            entry["logging.googleapis.com/spanId"] = trace.format_span_id(span.span_id)
            entry["logging.googleapis.com/trace_sampled"] = span.trace_flags.sampled
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Idempotent: deployables call it at start-up."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    root.setLevel(level)
