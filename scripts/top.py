"""`python -m scripts.top`: a live view of a local stack — jobs queued and running, finished and failed per
minute, in flight per runner, p50/p99 latency, 429 answers and dead letters.

Two sources, each read as an operator would: Firestore's aggregation counts (jobs by status, dead-lettered
jobs; every tenant) and each runner's Prometheus endpoint (`GET /metrics`). Rates and latency quantiles are
over the last refresh interval (counter and histogram deltas between two scrapes); `--once` scrapes twice,
`--interval` apart, prints one frame and exits. In production the same figures are on the Cloud Monitoring
dashboard (docs/DEPLOY.md): Cloud Run's instances cannot be scraped one by one from outside.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jobs.constants import JOBS_COLLECTION

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Scrape:
    """One runner's metrics at one moment: each sample by name and labels."""

    at: float
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        scrape = cls(at)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                scrape.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return scrape

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self.samples.items() if n == name)

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of a histogram, by bound."""
        rows = [(float(dict(labels)["le"]), v) for (n, labels), v in self.samples.items() if n == f"{name}_bucket"]
        return sorted(rows)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # past the highest finite bucket: its bound, as Prometheus answers
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return None


def _delta(now: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in now]


@dataclass
class Frame:
    queued: int
    running: int
    failed: int
    dead_lettered: int
    runners: dict[str, tuple[Scrape, Scrape | None]]  # url -> (now, previous)


def firestore_counts(db: Any) -> dict[str, int]:
    jobs = db.collection(JOBS_COLLECTION)

    def count(query: Any) -> int:
        return int(query.count().get()[0][0].value)

    return {
        "queued": count(jobs.where(filter=FieldFilter("status", "==", "queued"))),
        "running": count(jobs.where(filter=FieldFilter("status", "==", "running"))),
        "failed": count(jobs.where(filter=FieldFilter("status", "==", "failed"))),
        "dead_lettered": count(jobs.where(filter=FieldFilter("error.code", "==", "dead_lettered"))),
    }


def scrape(client: httpx.Client, url: str) -> Scrape:
    return Scrape.parse(client.get(url, timeout=5).raise_for_status().text, time.monotonic())


def _per_minute(now: Scrape, before: Scrape | None, name: str, **labels: str) -> str:
    if before is None or now.at <= before.at:
        return "—"
    value = now.value(name, **labels) if labels else now.total(name)
    earlier = before.value(name, **labels) if labels else before.total(name)
    return f"{(value - earlier) * 60 / (now.at - before.at):.1f}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def render(frame: Frame) -> Group:
    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column()
    head.add_row(Text(f"queued {frame.queued}", style="yellow"), Text(f"running {frame.running}", style="cyan"),
                 Text(f"failed {frame.failed}", style="red"),
                 Text(f"dead letters {frame.dead_lettered}", style="magenta"))
    runners = Table(title="runners", title_justify="left", box=None)
    for column in ("runner", "in flight", "engine running", "engine waiting", "finished/min", "failed/min",
                   "429/min", "lost claims", "p50 latency", "p99 latency"):
        runners.add_column(column, justify="left" if column == "runner" else "right", no_wrap=True)
    for url, (now, before) in frame.runners.items():
        latency = now.buckets("llmq_job_latency_seconds")
        window = _delta(latency, before.buckets("llmq_job_latency_seconds")) if before else latency
        if not window or window[-1][1] <= 0:
            window = latency  # nothing finished in the window: since the runner started
        runners.add_row(
            url, f"{now.value('llmq_inflight'):.0f}", f"{now.value('llmq_engine_running'):.0f}",
            f"{now.value('llmq_engine_waiting'):.0f}",
            _per_minute(now, before, "llmq_jobs_finished_total", outcome="succeeded"),
            _per_minute(now, before, "llmq_jobs_finished_total", outcome="failed"),
            _per_minute(now, before, "llmq_push_answers_total", code="429"),
            f"{now.value('llmq_lost_claims_total'):.0f}",
            _seconds(quantile(0.5, window)), _seconds(quantile(0.99, window)))
    return Group(head, runners)


class Top:
    def __init__(self, db: Any, metrics_urls: Iterable[str]) -> None:
        self._db = db
        self._urls = list(metrics_urls)
        self._http = httpx.Client()
        self._previous: dict[str, Scrape] = {}

    def frame(self) -> Frame:
        counts = firestore_counts(self._db)
        runners: dict[str, tuple[Scrape, Scrape | None]] = {}
        for url in self._urls:
            now = scrape(self._http, url)
            runners[url] = (now, self._previous.get(url))
            self._previous[url] = now
        return Frame(runners=runners, **counts)

    def close(self) -> None:
        self._http.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local", help="the local stack's state dir")
    parser.add_argument("--metrics-url", action="append", default=[],
                        help="a runner's /metrics (repeatable); default: the stack's runner")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one frame (two scrapes, --interval apart)")
    args = parser.parse_args(argv)
    stack = json.loads((args.state_dir / "stack.json").read_text())
    os.environ.update(stack["env"])  # the stack's emulators
    top = Top(firestore.Client(project=stack["project"]), args.metrics_url or [stack["metrics_url"]])
    console = Console(width=160)
    try:
        if args.once:
            top.frame()
            time.sleep(args.interval)
            console.print(render(top.frame()))
            return 0
        with Live(render(top.frame()), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(render(top.frame()), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        top.close()


if __name__ == "__main__":
    sys.exit(main())
