"""Load benchmark: the platform's own overhead at its limits, in one run on one local stack.

    python -m scripts.bench_load [--clients 50 200 500] [--submit-jobs 2000] [--short-concurrency 1 8 48]

Four tables, each as ratios measured in the same run:
  wait      — `GET ?wait` against a Firestore listener: how long after the listener sees a job's end the
              waiting request answers (sequential jobs), and jobs/s of 48 clients waiting each way.
  short     — 64-token jobs: the runner's engine alone (called directly, same settings) against the whole
              pipeline, at 1 / 8 / 48 in flight (closed loop), and the time of each hop of a short job.
  priority  — one `interactive` 32-token job's submit → `succeeded` time, idle and right after 200
              `priority: "batch"` jobs were submitted.
  submit    — 50 / 200 / 500 concurrent clients from 10 tenants sending --submit-jobs jobs: jobs/s, p50,
              p99 and the answers by status code, against the ceiling of the same two writes (Firestore
              create + Pub/Sub publish, the domain's JobService without HTTP) from 32 threads of this process.
              The runner's push subscriptions are switched to pull first, so that the jobs only queue: on
              this 2-core machine a runner draining them would share the CPU with the function measured.
              Run last for that reason.

The local emulators are not a performance model of Google Cloud: the ratios are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runner.settings import RunnerSettings
from scripts.bench_pipeline import (
    BENCH_MAX_MODEL_LEN,
    PROMPT,
    PipelineClient,
    closed_loop_threads,
    engine_alone,
    pipeline,
)
from scripts.build_tiny_model import ensure_model
from scripts.local_stack import LOCAL_VLLM_ENV
from scripts.stack_client import FINAL, Stack, started_stack

REPO = Path(__file__).resolve().parents[1]
TENANTS = 10


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class EndWatcher:
    """When each job's final state was first seen by a Firestore listener on its document (a listener
    per job, as a client watching its own job has)."""

    def __init__(self, stack: Stack) -> None:
        self._jobs = stack.firestore().collection("jobs")
        self._lock = threading.Lock()
        self.ended: dict[str, tuple[float, dict[str, Any]]] = {}
        self._events: dict[str, threading.Event] = {}
        self._watches: dict[str, Any] = {}
        self.missed = 0  # ends only a re-read found

    def watch(self, job_id: str) -> None:
        event = threading.Event()
        with self._lock:
            self._events[job_id] = event

        def on_snapshot(snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
            for snapshot in snapshots:
                doc = snapshot.to_dict() if snapshot.exists else None
                if doc and doc["status"] in FINAL:
                    with self._lock:
                        self.ended.setdefault(job_id, (time.monotonic(), doc))
                    event.set()

        self._watches[job_id] = self._jobs.document(job_id).on_snapshot(on_snapshot)

    def wait(self, job_id: str, timeout: float = 300) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        # A listener can miss a change under load (the emulator's, seen here): re-read now and then too.
        while not self._events[job_id].wait(5):
            doc = self._jobs.document(job_id).get().to_dict() or {}
            if doc.get("status") in FINAL:
                with self._lock:
                    self.ended.setdefault(job_id, (time.monotonic(), doc))
                    self.missed += 1
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not end within {timeout} s")
        self._watches.pop(job_id).unsubscribe()
        return self.ended[job_id]

    def close(self) -> None:
        for watch in self._watches.values():
            watch.unsubscribe()
        self._watches.clear()


# --- wait ---

def wait_table(stack: Stack, *, sequential: int, concurrency: int, rounds: int, max_tokens: int) -> dict[str, Any]:
    body = {"prompt": PROMPT, "max_tokens": max_tokens}
    watcher = EndWatcher(stack)
    lags: list[float] = []
    with stack.http(timeout=120) as client:
        for _ in range(sequential):
            job_id = _submitted(stack, client, body)
            watcher.watch(job_id)
            response = stack.job(client, job_id, wait=60)
            answered = time.monotonic()
            seen, _doc = watcher.wait(job_id)
            if response.json()["status"] not in FINAL:
                raise RuntimeError(f"?wait answered before the end: {response.json()['status']}")
            lags.append(answered - seen)

        def by_wait() -> int:
            job_id = _submitted(stack, client, body)
            view = stack.job(client, job_id, wait=60).json()
            while view["status"] not in FINAL:
                view = stack.job(client, job_id, wait=60).json()
            return int(view["usage"]["completion_tokens"])

        listeners = PipelineClient(stack, client, max_tokens=max_tokens)
        n = concurrency * rounds
        started = time.monotonic()
        closed_loop_threads(listeners.one_job, n, concurrency)
        listener_s = time.monotonic() - started
        started = time.monotonic()
        closed_loop_threads(by_wait, n, concurrency)
        wait_s = time.monotonic() - started
    watcher.close()
    result = {"sequential_jobs": sequential, "lag_p50_s": statistics.median(lags), "lag_max_s": max(lags),
              "concurrency": concurrency, "jobs": n, "listener_jobs_s": n / listener_s, "wait_jobs_s": n / wait_s,
              "ends_listeners_missed": listeners.missed_by_listener + watcher.missed}
    result["wait_over_listener"] = result["wait_jobs_s"] / result["listener_jobs_s"]
    return result


def _submitted(stack: Stack, client: httpx.Client, body: dict[str, Any]) -> str:
    response = stack.submit(client, body)
    if response.status_code != 202:
        raise RuntimeError(f"submit: {response.status_code} {response.text[:200]}")
    return str(response.json()["id"])


# --- short jobs: where the time goes ---

HOPS = (("submit → claimed (queue)", "created_at", "started_at"),
        ("claimed → finished (generation + writes)", "started_at", "finished_at"))


def hop_table(stack: Stack, *, jobs: int, max_tokens: int) -> dict[str, float]:
    """Median time of each hop of a short job, from the client's clock and the document's timestamps."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens}
    watcher = EndWatcher(stack)
    hops: dict[str, list[float]] = {}
    with stack.http(timeout=120) as client:
        for _ in range(jobs):
            sent = time.monotonic()
            job_id = _submitted(stack, client, body)
            accepted = time.monotonic()
            watcher.watch(job_id)
            seen, doc = watcher.wait(job_id)
            hops.setdefault("HTTP submit (client → 202)", []).append(accepted - sent)
            for name, start, end in HOPS:
                hops.setdefault(name, []).append((doc[end] - doc[start]).total_seconds())
            metrics = doc.get("metrics") or {}
            hops.setdefault("  of which generation in the engine", []).append(metrics.get("generation_seconds", 0.0))
            hops.setdefault("finished → seen by a listener", []).append(
                seen - accepted - (doc["finished_at"] - doc["created_at"]).total_seconds())
            hops.setdefault("submit → seen by a listener (total)", []).append(seen - sent)
    watcher.close()
    return {name: statistics.median(values) for name, values in hops.items()}


# --- priority ---

def priority_table(stack: Stack, *, batch_jobs: int, probes: int) -> dict[str, Any]:
    interactive = {"prompt": PROMPT, "max_tokens": 32, "priority": "interactive"}
    batch = {"prompt": PROMPT, "max_tokens": 64, "priority": "batch"}
    watcher = EndWatcher(stack)

    def one(client: httpx.Client) -> tuple[float, dict[str, Any]]:
        sent = time.monotonic()
        job_id = _submitted(stack, client, interactive)
        watcher.watch(job_id)
        seen, doc = watcher.wait(job_id)
        if doc["status"] != "succeeded":
            raise RuntimeError(f"interactive job ended {doc['status']}")
        return seen - sent, doc

    from google.cloud.firestore_v1.base_query import FieldFilter

    jobs = stack.firestore().collection("jobs")
    with stack.http(timeout=120) as client:
        idle = statistics.median(one(client)[0] for _ in range(probes))
        batch_ids: list[str] = []
        with ThreadPoolExecutor(16) as pool:
            batch_ids = list(pool.map(lambda _: _submitted(stack, client, batch), range(batch_jobs)))
        for job_id in batch_ids:
            watcher.watch(job_id)
        loaded: list[float] = []
        batch_started_before: list[int] = []
        for _ in range(probes):
            seconds, doc = one(client)
            loaded.append(seconds)
            query = (jobs.where(filter=FieldFilter("priority", "==", "batch"))
                     .where(filter=FieldFilter("started_at", "<", doc["started_at"])))
            started = query.count().get()[0][0].value
            batch_started_before.append(int(started))
        drained_from = time.monotonic()
        for job_id in batch_ids:
            watcher.wait(job_id, timeout=600)
        drain_s = time.monotonic() - drained_from
    watcher.close()
    return {"idle_s": idle, "loaded_s": statistics.median(loaded), "loaded_max_s": max(loaded),
            "ratio": statistics.median(loaded) / idle, "batch_jobs": batch_jobs,
            "batch_started_before_probe": batch_started_before, "batch_drain_after_probes_s": drain_s}


# --- submit under load ---

@dataclass
class SubmitPoint:
    clients: int
    jobs: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)

    @property
    def accepted_per_s(self) -> float:
        return self.codes.get("202", 0) / self.seconds


def _tenant_keys(stack: Stack) -> list[str]:
    from jobs.adapters.api_key_store import FirestoreApiKeyStore
    from scripts.api_keys import create_key

    store = FirestoreApiKeyStore(stack.firestore())
    return [create_key(store, tenant=f"bench-tenant-{i}", name="bench_load") for i in range(TENANTS)]


def pause_delivery(stack: Stack) -> None:
    """Turn the runner's push subscriptions into pull ones: published jobs stay queued."""
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # no py.typed

    with stack.emulator_env():
        subscriber = pubsub_v1.SubscriberClient()
        for topic in stack.info["topics"]:
            subscriber.modify_push_config(request={
                "subscription": subscriber.subscription_path(stack.project, f"{topic}-runner"), "push_config": {}})
        subscriber.close()


def two_write_ceiling(stack: Stack, *, jobs: int, threads: int) -> float:
    """Jobs/s of the domain's own submit (Firestore create + Pub/Sub publish, no HTTP, no quota) from
    `threads` threads of this process: what the function could reach if its HTTP layer cost nothing."""
    from jobs.adapters.clients import publisher_client
    from jobs.adapters.firestore_store import FirestoreJobStore
    from jobs.adapters.pubsub_publisher import PubSubPublisher
    from jobs.errors import DependencyUnavailable
    from jobs.models import JobRequest
    from jobs.service import JobService
    from jobs.settings import ApiSettings

    with stack.emulator_env():
        settings = ApiSettings(**{k.removeprefix("LLMQ_").lower(): json.loads(v) if v.startswith("[") else v
                                  for k, v in stack.info["settings_env"].items()
                                  if k in ("LLMQ_MODELS", "LLMQ_TOPICS", "LLMQ_BATCH_PRIORITY_TOPICS", "LLMQ_PROJECT")})
        service = JobService(store=FirestoreJobStore(stack.firestore()),
                             publisher=PubSubPublisher(publisher_client(), project=settings.project,
                                                       topics=settings.topics, timeout=10,
                                                       batch_topics=settings.batch_priority_topics),
                             catalog=settings.catalog)
        request = JobRequest.model_validate({"prompt": PROMPT, "max_tokens": 1})

        def one(i: int) -> int:
            try:
                service.submit(request, tenant=f"ceiling-{i % TENANTS}", idempotency_key=None)
            except DependencyUnavailable:
                return 0
            return 1

        started = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            stored = sum(pool.map(one, range(jobs)))
        return stored / (time.monotonic() - started)


async def submit_load(url: str, keys: list[str], *, clients: int, jobs: int) -> SubmitPoint:
    body = {"prompt": PROMPT, "max_tokens": 1}
    per_client = max(1, jobs // clients)
    point = SubmitPoint(clients, per_client * clients, 0.0)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=60), limits=limits) as client:

        async def one_client(i: int) -> None:
            headers = {"Authorization": f"Bearer {keys[i % len(keys)]}"}
            for _ in range(per_client):
                sent = time.monotonic()
                try:
                    response = await client.post(f"{url}/v1/jobs", json=body, headers=headers)
                    code = str(response.status_code)
                except httpx.HTTPError as err:
                    code = type(err).__name__
                point.latencies.append(time.monotonic() - sent)
                point.codes[code] += 1

        started = time.monotonic()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        point.seconds = time.monotonic() - started
    return point


def submit_table(stack: Stack, levels: list[int], *, jobs: int) -> dict[str, Any]:
    pause_delivery(stack)
    keys = _tenant_keys(stack)
    rows = []
    for clients in levels:
        ceiling = two_write_ceiling(stack, jobs=min(jobs, 1000), threads=32)
        point = asyncio.run(submit_load(stack.info["submit_url"], keys, clients=clients, jobs=jobs))
        row = {"clients": clients, "jobs": point.jobs, "accepted_jobs_s": point.accepted_per_s,
               "p50_s": _percentile(point.latencies, 0.5), "p99_s": _percentile(point.latencies, 0.99),
               "max_s": max(point.latencies), "codes": dict(point.codes), "ceiling_jobs_s": ceiling,
               "over_ceiling": point.accepted_per_s / ceiling}
        rows.append(row)
        print(f"  submit {clients:>4} clients: {row['accepted_jobs_s']:6.1f} jobs/s p50 {row['p50_s']:.2f} s "
              f"p99 {row['p99_s']:.2f} s {row['codes']} | ceiling {ceiling:.0f} jobs/s", flush=True)
    return {"levels": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--submit-jobs", type=int, default=2000, help="jobs sent at each client level")
    parser.add_argument("--short-concurrency", type=int, nargs="+", default=[1, 8, 48])
    parser.add_argument("--short-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-jobs", type=int, default=200, help="priority table: batch jobs waiting")
    parser.add_argument("--tables", nargs="+", default=["wait", "short", "priority", "submit"],
                        choices=["wait", "short", "priority", "submit"])
    parser.add_argument("--model-size", default="tiny", choices=["tiny", "bench"])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local" / "bench-load")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--stack-arg", action="append", default=[], help="extra local_stack argument (repeatable)")
    parser.add_argument("--plot", type=Path, nargs="+", metavar="LABEL=REPORT.json PNG",
                        help="draw the submit figures of saved reports (--json) into the PNG, and exit")
    args = parser.parse_args()
    if args.plot:
        *sources, png = args.plot
        plot(png, {str(s).split("=", 1)[0]: json.loads(Path(str(s).split("=", 1)[1]).read_text()) for s in sources})
        return
    model_dir = ensure_model(REPO / ".local" / "models" / args.model_size, args.model_size)
    levels = sorted(args.short_concurrency)
    report: dict[str, Any] = {}
    os.environ.update(LOCAL_VLLM_ENV)
    if "short" in args.tables:
        print("short jobs: the engine alone", flush=True)
        engine = asyncio.run(engine_alone(model_dir, levels, max_tokens=args.short_tokens, rounds=args.rounds,
                                          device="cpu", engine_name="vllm",
                                          max_concurrency=RunnerSettings().max_concurrency))
    args.state_dir.mkdir(parents=True, exist_ok=True)
    stack_args = ["--model-size", args.model_size, "--reconcile-every", "0",
                  "--runner-env", f"LLMQ_MAX_MODEL_LEN={BENCH_MAX_MODEL_LEN}", *args.stack_arg]
    print("starting the local stack...", flush=True)
    with started_stack(args.state_dir.resolve(), *stack_args) as stack:
        if "wait" in args.tables:
            print("wait: ?wait against a listener", flush=True)
            report["wait"] = wait_table(stack, sequential=10, concurrency=48, rounds=args.rounds, max_tokens=16)
            print(f"  {report['wait']}", flush=True)
        if "short" in args.tables:
            print("short jobs: hop by hop, then the pipeline", flush=True)
            report["hops"] = hop_table(stack, jobs=10, max_tokens=args.short_tokens)
            print(f"  {report['hops']}", flush=True)
            pipe = pipeline(stack, levels, max_tokens=args.short_tokens, rounds=args.rounds)
            report["short"] = [{"concurrency": c, "engine_jobs_s": engine[c].jobs_per_s,
                                "pipeline_jobs_s": pipe[c].jobs_per_s,
                                "pipeline_over_engine": pipe[c].tokens_per_s / engine[c].tokens_per_s}
                               for c in levels]
        if "priority" in args.tables:
            print("priority: interactive behind batch", flush=True)
            report["priority"] = priority_table(stack, batch_jobs=args.batch_jobs, probes=3)
            print(f"  {report['priority']}", flush=True)
        if "submit" in args.tables:
            print("submit under load (delivery paused)", flush=True)
            report["submit"] = submit_table(stack, sorted(args.clients), jobs=args.submit_jobs)
    _print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


def plot(path: Path, reports: dict[str, dict[str, Any]]) -> None:
    """Submit latency and accepted jobs/s by clients, one line per report (e.g. before / after)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, latency) = plt.subplots(1, 2, figsize=(10, 4.2))
    for label, report in reports.items():
        rows = report.get("submit", {}).get("levels", [])
        clients = [r["clients"] for r in rows]
        rate.plot(clients, [r["accepted_jobs_s"] for r in rows], "o-", label=f"{label}: accepted")
        rate.plot(clients, [r["ceiling_jobs_s"] for r in rows], "x--", label=f"{label}: two-write ceiling")
        latency.plot(clients, [r["p50_s"] for r in rows], "o-", label=f"{label}: p50")
        latency.plot(clients, [r["p99_s"] for r in rows], "s--", label=f"{label}: p99")
    for ax, ylabel in ((rate, "jobs / s"), (latency, "seconds per submission")):
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("llmq submit under load (one local function instance, this machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _print_report(report: dict[str, Any]) -> None:
    if "wait" in report:
        w = report["wait"]
        print("\n| ?wait against a listener | value |\n|---|---|")
        print(f"| sequential: ?wait answers after the listener sees the end, p50 / max | "
              f"{w['lag_p50_s']:.3f} s / {w['lag_max_s']:.3f} s |")
        print(f"| {w['concurrency']} clients: jobs/s waiting with ?wait ÷ with listeners | "
              f"{w['wait_jobs_s']:.2f} ÷ {w['listener_jobs_s']:.2f} = {w['wait_over_listener']:.2f} |")
    if "hops" in report:
        print("\n| a short job, hop by hop (median of 10, one at a time) | seconds |\n|---|---|")
        for name, seconds in report["hops"].items():
            print(f"| {name} | {seconds:.3f} |")
    if "short" in report:
        print("\n| in flight | engine alone jobs/s | pipeline jobs/s | pipeline ÷ engine |\n|---|---|---|---|")
        for row in report["short"]:
            print(f"| {row['concurrency']} | {row['engine_jobs_s']:.2f} | {row['pipeline_jobs_s']:.2f} | "
                  f"{row['pipeline_over_engine']:.2f} |")
    if "priority" in report:
        p = report["priority"]
        print("\n| interactive job, submit → succeeded | seconds |\n|---|---|")
        print(f"| idle (median of 3) | {p['idle_s']:.2f} |")
        print(f"| right after {p['batch_jobs']} batch jobs (median of 3, max) | {p['loaded_s']:.2f} "
              f"({p['loaded_max_s']:.2f}) |")
        print(f"| loaded ÷ idle | {p['ratio']:.1f}× |")
        print(f"(batch jobs started before each probe: {p['batch_started_before_probe']})")
    if "submit" in report:
        print("\n| clients | jobs/s accepted | p50 s | p99 s | answers | two-write ceiling jobs/s | ÷ ceiling |")
        print("|---|---|---|---|---|---|---|")
        for row in report["submit"]["levels"]:
            codes = ", ".join(f"{k}: {v}" for k, v in sorted(row["codes"].items()))
            print(f"| {row['clients']} | {row['accepted_jobs_s']:.1f} | {row['p50_s']:.2f} | {row['p99_s']:.2f} | "
                  f"{codes} | {row['ceiling_jobs_s']:.0f} | {row['over_ceiling']:.2f} |")


if __name__ == "__main__":
    main()
