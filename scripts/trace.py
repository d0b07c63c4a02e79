"""`python -m scripts.trace JOB_ID`: a job's hops as a waterfall, from the local stack's traces.

Every process of the local stack appends its finished spans to `<state dir>/traces/<service>-<pid>.jsonl`
(jobs/tracing.py, the `file` exporter). This finds the spans that name the job (`llmq.job_id`), takes their
trace (one per job: submit, the Pub/Sub hop, the runner, a re-publish all join it) and draws each span of it
as a bar on one time axis, children under their parent, events (the first token) marked on their span.
In production the same trace is in Cloud Trace: the job document's `trace_id`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jobs.tracing import BATCH_ID, JOB_ID

REPO = Path(__file__).resolve().parents[1]
BAR_WIDTH = 40


@dataclass
class SpanLine:
    record: dict[str, Any]
    children: list[SpanLine] = field(default_factory=list)

    @property
    def start(self) -> int:
        return int(self.record["start"])

    @property
    def end(self) -> int:
        return int(self.record["end"])


def read_spans(trace_dir: Path) -> list[dict[str, Any]]:
    """Every span the stack's processes exported (a line still being written is skipped)."""
    spans = []
    for path in sorted(trace_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return spans


def job_trace(spans: Iterable[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    """The spans of the job's trace (or a batch's): every span of each trace in which a span names it."""
    spans = list(spans)
    traces = {s["trace_id"] for s in spans
              if job_id in (s.get("attributes", {}).get(JOB_ID), s.get("attributes", {}).get(BATCH_ID))}
    return sorted((s for s in spans if s["trace_id"] in traces), key=lambda s: (s["start"], s["end"]))


def tree(spans: list[dict[str, Any]]) -> list[SpanLine]:
    """Spans under their parents; a span whose parent is not here (the root, or a hop whose process has not
    flushed yet) is a root."""
    lines = {s["span_id"]: SpanLine(s) for s in spans}
    roots: list[SpanLine] = []
    for line in lines.values():
        parent = lines.get(line.record.get("parent_id") or "")
        (parent.children if parent is not None else roots).append(line)
    for line in lines.values():
        line.children.sort(key=lambda c: c.start)
    return sorted(roots, key=lambda r: r.start)


def _bar(start: int, end: int, origin: int, total: int, events: list[int]) -> Text:
    scale = BAR_WIDTH / total if total > 0 else 0
    left = min(BAR_WIDTH - 1, int((start - origin) * scale))
    width = max(1, int((end - start) * scale))
    cells = [" "] * BAR_WIDTH
    for i in range(left, min(BAR_WIDTH, left + width)):
        cells[i] = "█"
    for at in events:
        cells[min(BAR_WIDTH - 1, int((at - origin) * scale))] = "◆"
    return Text("".join(cells), style="cyan")


def waterfall(spans: list[dict[str, Any]], job_id: str) -> Table:
    """The table: one row per span, in tree order, with its start offset, duration and bar."""
    origin = min(s["start"] for s in spans)
    total = max(s["end"] for s in spans) - origin
    trace_ids = sorted({s["trace_id"] for s in spans})
    table = Table(title=f"job {job_id} — trace {', '.join(trace_ids)} — {total / 1e6:.1f} ms",
                  title_justify="left", box=None, pad_edge=False)
    for column, justify in (("span", "left"), ("service", "left"), ("start ms", "right"), ("duration ms", "right"),
                            ("", "left")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]

    def add(line: SpanLine, depth: int) -> None:
        r = line.record
        events = r.get("events", [])
        name = "  " * depth + r["name"] + ("  ✗" if r.get("status") == "ERROR" else "")
        notes = "".join(f"  ◆ {e['name']} +{(e['time'] - line.start) / 1e6:.1f} ms" for e in events)
        outcome = r.get("attributes", {}).get("llmq.outcome")
        table.add_row(name, str(r.get("service") or ""), f"{(line.start - origin) / 1e6:.1f}",
                      f"{(line.end - line.start) / 1e6:.1f}",
                      _bar(line.start, line.end, origin, total, [e["time"] for e in events])
                      + Text((f"  {outcome}" if outcome else "") + notes))
        for child in line.children:
            add(child, depth + 1)

    for root in tree(spans):
        add(root, 0)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job_id", help="a job id (or a batch id: its runs over its file, with line counts)")
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local", help="the local stack's state dir")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="wait up to this many seconds for the job's spans to appear")
    args = parser.parse_args(argv)
    trace_dir = args.state_dir / "traces"
    deadline = time.monotonic() + args.wait
    while not (spans := job_trace(read_spans(trace_dir), args.job_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not spans:
        print(f"no spans name job {args.job_id} under {trace_dir}", file=sys.stderr)
        return 1
    Console(width=160).print(waterfall(spans, args.job_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
