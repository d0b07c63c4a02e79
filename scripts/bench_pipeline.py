"""Pipeline benchmark: how much of the engine's own throughput survives the whole pipeline.

    python -m scripts.bench_pipeline [--concurrency 1 8 32] [--max-tokens 128] [--engine vllm] [--compare-transformers]

In one run, at each concurrency C (C requests or jobs in flight, closed loop):
  (a) engine   — the runner's engine (vLLM; --engine transformers on a machine without it) on the bench model,
                 called directly; with --compare-transformers also the transformers engine, as (a').
  (b) pipeline — HTTP submit → Firestore + Pub/Sub push → runner (same engine and model) → GCS +
                 Firestore, until each job is `succeeded` (GET ?wait, a Firestore listener);
  (c) naive    — a worker that pulls one job at a time and processes it alone (what a simple queue
                 worker does): the same processor, adapters and engine, with one job in flight.
It prints jobs/s and tokens/s for each, the ratios pipeline ÷ engine and pipeline ÷ naive, writes a
PNG plot, and appends nothing anywhere else. The local emulators are not a performance model of
Google Cloud: the ratios, not the absolute numbers, are the result.

With --batch (opt-in) it adds:
  (d) batch vs jobs — the same N prompts (--batch-n) as one OpenAI-format batch file through the batch
                 runner (runner.batch, its engine already loaded, as in a running job) vs as N jobs
                 through the push pipeline (all N submitted at once); it prints both throughputs and
                 the ratio batch ÷ jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from jobs.engine import GenerationRequest, SamplingOptions
from runner.outcome import Disposition
from runner.settings import RunnerSettings
from scripts.build_tiny_model import ensure_model
from scripts.local_stack import LOCAL_VLLM_ENV
from scripts.stack_client import Stack, started_stack

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Write a short story about a lighthouse keeper who"
BENCH_MAX_MODEL_LEN = 2048  # every engine the bench starts, the stack's runner included: the same KV-cache shape


@dataclass
class Point:
    jobs: int
    seconds: float
    tokens: int
    # Where the time went: CPU seconds by role, and the engine's counters (empty where not measured).
    cpu: dict[str, float] = field(default_factory=dict)
    forward_passes: int = 0

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def cpu_percent(self, role: str) -> float:
        return 100 * self.cpu.get(role, 0.0) / self.seconds

    @property
    def engine_tokens_per_cpu_s(self) -> float:
        """Tokens per CPU-second of the process that runs the engine: what the engine gets out of the CPU
        it is given, whatever else runs on the machine."""
        cpu = self.cpu.get("engine process", 0.0)
        return self.tokens / cpu if cpu else 0.0

    @property
    def sequences_per_pass(self) -> float:
        """Mean batch size: tokens generated per forward pass (prefill passes count too)."""
        return self.tokens / self.forward_passes if self.forward_passes else 0.0


class CpuMeter:
    """CPU seconds used by process trees (the emulators' Java processes are children of `gcloud`, so each
    root counts with all its descendants), except this process, which started the whole stack: it counts
    alone, under `self_role` (with its children when `with_children`: the engine alone, whose vLLM runs in
    engine-core and worker processes of its own)."""

    def __init__(self, roles: dict[str, list[int]], *, self_role: str, with_children: bool = False) -> None:
        self._roles = roles
        self._self_role = self_role
        self._with_children = with_children
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        me = psutil.Process()
        mine = [me, *me.children(recursive=True)] if self._with_children else [me]
        totals = {self._self_role: sum(_cpu_seconds(p) for p in mine)}
        for role, roots in self._roles.items():
            processes: list[psutil.Process] = []
            for pid in roots:
                with contextlib.suppress(psutil.NoSuchProcess):
                    root = psutil.Process(pid)
                    processes += [root, *root.children(recursive=True)]
            totals[role] = sum(_cpu_seconds(p) for p in processes if p.pid != me.pid)
        return totals

    def used(self) -> dict[str, float]:
        """CPU seconds per role since this meter was made."""
        now = self._read()
        return {role: now[role] - self._start.get(role, 0.0) for role in now}


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:  # exited meanwhile
        return 0.0
    return times.user + times.system


def jobs_for(concurrency: int, rounds: int) -> int:
    return max(4, concurrency * rounds)


# --- (a) the engine alone ---

def engine_settings(engine: str, model_dir: Path, *, max_concurrency: int, device: str,
                    model_name: str = "bench") -> RunnerSettings:
    """The settings the local stack's runner runs with (LOCAL_VLLM_ENV is in this process's environment)."""
    return RunnerSettings(engine=engine, model_path=str(model_dir), model_name=model_name,  # type: ignore[arg-type]
                          device=device, max_concurrency=max_concurrency, max_model_len=BENCH_MAX_MODEL_LEN)


async def engine_alone(model_dir: Path, levels: list[int], *, max_tokens: int, rounds: int, device: str,
                       engine_name: str, max_concurrency: int | None = None) -> dict[int, Point]:
    """The engine at each level; it runs max_concurrency sequences at once (default: the highest level)."""
    from runner.engines import start_engine

    engine = await start_engine(engine_settings(engine_name, model_dir, max_concurrency=max_concurrency or max(levels),
                                                device=device))
    results: dict[int, Point] = {}
    try:
        await _drive(engine, 2, max_tokens)  # warm-up
        for c in levels:
            n = jobs_for(c, rounds)
            meter, passes = CpuMeter({}, self_role="engine process", with_children=True), engine.stats.forward_passes
            started = time.monotonic()
            tokens = await _drive_closed_loop(engine, n, c, max_tokens)
            results[c] = Point(n, time.monotonic() - started, tokens, cpu=meter.used(),
                               forward_passes=engine.stats.forward_passes - passes)
            print(f"  {engine_name:<12} C={c:<3} {results[c].jobs_per_s:7.2f} jobs/s {results[c].tokens_per_s:8.1f} tok/s "
                  f"{_diagnosis(results[c])}", flush=True)
    finally:
        await engine.shutdown()
    return results


async def _generate(engine: Any, max_tokens: int) -> int:
    request = GenerationRequest(request_id=uuid.uuid4().hex, prompt=PROMPT,
                                sampling=SamplingOptions(max_tokens=max_tokens, temperature=0.8, top_p=0.95))
    last = None
    async for update in engine.generate(request):
        last = update
    return last.completion_tokens if last else 0


async def _drive(engine: Any, n: int, max_tokens: int) -> int:
    return sum(await asyncio.gather(*(_generate(engine, max_tokens) for _ in range(n))))


async def _drive_closed_loop(engine: Any, n: int, concurrency: int, max_tokens: int) -> int:
    remaining = n
    total = 0

    async def worker() -> None:
        nonlocal remaining, total
        while remaining > 0:
            remaining -= 1
            tokens = await _generate(engine, max_tokens)
            total += tokens  # not `total += await ...`: that reads total before awaiting, losing updates

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total


# --- (b) the whole pipeline ---

class PipelineClient:
    """Submits jobs over HTTP and learns of each one's end from a Firestore listener on its document, as a
    client watching its job does. Not one query listener for all of them: the client library re-sorts a
    query's whole result set on every change, so a query over every finished job costs quadratic CPU on
    the shared machine (measured at a quarter of a core for 128 jobs), where one document each is linear."""

    def __init__(self, stack: Stack, client: httpx.Client, *, max_tokens: int) -> None:
        self._stack, self._client = stack, client
        self._jobs = stack.firestore().collection("jobs")
        self._body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "top_p": 0.95}
        self.missed_by_listener = 0  # ends only a re-read found

    def one_job(self) -> int:
        """Submit one job and wait for its end; returns its completion tokens."""
        response = self._stack.submit(self._client, self._body)
        if response.status_code != 202:
            raise RuntimeError(f"submit: {response.status_code} {response.text[:200]}")
        job_id = response.json()["id"]
        done = threading.Event()
        final: list[dict[str, Any]] = []

        def on_snapshot(snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
            for snapshot in snapshots:
                doc = snapshot.to_dict() if snapshot.exists else None
                if doc and doc["status"] in ("succeeded", "failed", "cancelled"):
                    final.append(doc)
                    done.set()

        watch = self._jobs.document(job_id).on_snapshot(on_snapshot)
        deadline = time.monotonic() + 300
        try:
            # A listener can miss a change under load (the emulator's, seen here), so read the document now
            # and then as well, as the API's `?wait` does.
            while not done.wait(5):
                doc = self._jobs.document(job_id).get().to_dict() or {}
                if doc.get("status") in ("succeeded", "failed", "cancelled"):
                    final.append(doc)
                    self.missed_by_listener += 1
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} did not finish")
        finally:
            watch.unsubscribe()
        doc = final[0]
        if doc["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended {doc['status']}: {doc.get('error')}")
        return int(doc["usage"]["completion_tokens"])

    def close(self) -> None:
        pass


def pipeline(stack: Stack, levels: list[int], *, max_tokens: int, rounds: int) -> dict[int, Point]:
    results: dict[int, Point] = {}
    with stack.http(timeout=120) as client:
        jobs = PipelineClient(stack, client, max_tokens=max_tokens)
        try:
            jobs.one_job()  # warm-up
            for c in levels:
                n = jobs_for(c, rounds)
                meter, passes = CpuMeter(_stack_roles(stack), self_role="bench client"), _engine_counter(stack, client, "forward_passes")
                started = time.monotonic()
                tokens = closed_loop_threads(jobs.one_job, n, c)
                results[c] = Point(n, time.monotonic() - started, tokens, cpu=meter.used(),
                                   forward_passes=_engine_counter(stack, client, "forward_passes") - passes)
                print(f"  pipeline C={c:<3} {results[c].jobs_per_s:7.2f} jobs/s {results[c].tokens_per_s:8.1f} tok/s "
                      f"{_diagnosis(results[c])}", flush=True)
        finally:
            jobs.close()
    return results


def _stack_roles(stack: Stack) -> dict[str, list[int]]:
    """The stack's processes by role: the runner holds the engine; the emulators stand in for managed
    services, and the functions and this client run elsewhere in production."""
    pids = stack.info.get("pids", {})
    return {
        "engine process": [pids["runner"]] if "runner" in pids else [],
        "emulators": [pid for name, pid in pids.items() if name.endswith("_emulator")],
        "functions": [pid for name, pid in pids.items() if name != "runner" and not name.endswith("_emulator")],
    }


def _engine_counter(stack: Stack, client: httpx.Client, name: str) -> int:
    return int(client.get(f"{stack.info['runner_url']}/readyz").json().get("engine", {}).get(name, 0))


def _diagnosis(point: Point) -> str:
    if not point.cpu:
        return ""
    others = ", ".join(f"{role} {point.cpu_percent(role):.0f}%" for role in point.cpu if role != "engine process")
    return (f"| engine process {point.cpu_percent('engine process'):.0f}% CPU, "
            f"{point.engine_tokens_per_cpu_s:.0f} tok/CPU-s, {point.sequences_per_pass:.1f} seq/pass"
            + (f" | {others}" if others else ""))


def closed_loop_threads(one_job: Callable[[], int], n: int, concurrency: int) -> int:
    """Run n jobs with `concurrency` clients, each starting its next job when the last one ends."""
    lock = threading.Lock()
    remaining = [n]

    def worker(_: int) -> int:
        tokens = 0
        while True:
            with lock:
                if remaining[0] == 0:
                    return tokens
                remaining[0] -= 1
            tokens += one_job()

    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(worker, range(concurrency)))


# --- (c) the naive one-at-a-time worker ---

async def naive_worker(stack: Stack, model_dir: Path, *, jobs: int, max_tokens: int, device: str,
                       engine_name: str) -> Point:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # no py.typed

    from jobs.adapters.firestore_store import FirestoreJobStore
    from jobs.adapters.gcs_results import GcsResultStore
    from jobs.adapters.pubsub_publisher import PubSubPublisher
    from jobs.catalog import ModelCatalog, ModelSpec
    from jobs.models import JobMessage, JobRequest
    from jobs.service import JobService
    from runner.engines import start_engine
    from runner.processor import JobProcessor

    with stack.emulator_env():
        publisher_client, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        topic = f"naive-{uuid.uuid4().hex[:6]}"
        publisher_client.create_topic(name=publisher_client.topic_path(stack.project, topic))
        subscription = subscriber.subscription_path(stack.project, topic)
        subscriber.create_subscription(name=subscription, topic=publisher_client.topic_path(stack.project, topic))
        store = FirestoreJobStore(stack.firestore())
        service = JobService(store=store, catalog=ModelCatalog([ModelSpec(id=stack.info["model"])]),
                             publisher=PubSubPublisher(publisher_client, project=stack.project, topics=[topic],
                                                       timeout=10))
        engine = await start_engine(engine_settings(engine_name, model_dir, max_concurrency=1, device=device,
                                                    model_name=stack.info["model"]))
        settings = RunnerSettings(project=stack.project, results_bucket=stack.info["results_bucket"], max_inflight=1)
        processor = JobProcessor(store=store, results=GcsResultStore(stack.storage(), bucket=settings.results_bucket),
                                 engine=engine, settings=settings)
        body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "top_p": 0.95}
        try:
            for _ in range(jobs):
                service.submit(JobRequest.model_validate(body), tenant="public", idempotency_key=None)
            started = time.monotonic()
            done, tokens = 0, 0
            while done < jobs:
                response = await asyncio.to_thread(subscriber.pull, subscription=subscription, max_messages=1,
                                                   timeout=30)
                for received in response.received_messages:
                    message = JobMessage.model_validate_json(received.message.data)
                    outcome = await processor.process(message)
                    subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])
                    record = store.get(message.job_id)
                    assert outcome.disposition is Disposition.DONE and record is not None and record.usage is not None, outcome
                    tokens += record.usage.completion_tokens
                    done += 1
            point = Point(jobs, time.monotonic() - started, tokens)
        finally:
            await engine.shutdown()
    print(f"  naive    C=any {point.jobs_per_s:7.2f} jobs/s {point.tokens_per_s:8.1f} tok/s", flush=True)
    return point


# --- (d) one batch file vs N jobs (opt-in: --batch) ---

def pipeline_jobs(stack: Stack, n: int, *, max_tokens: int) -> Point:
    """N jobs through the push pipeline, all submitted at once (at most 64 clients)."""
    with stack.http(timeout=120) as client:
        jobs = PipelineClient(stack, client, max_tokens=max_tokens)
        try:
            started = time.monotonic()
            tokens = closed_loop_threads(jobs.one_job, n, min(n, 64))
            return Point(n, time.monotonic() - started, tokens)
        finally:
            jobs.close()


async def batch_file(stack: Stack, model_dir: Path, work: Path, n: int, *, max_tokens: int, max_concurrency: int,
                     device: str, engine_name: str) -> Point:
    """The same N prompts as one batch file through the batch runner (engine loaded beforehand, as in a
    running job; the time covers reading the file, generating and writing output.jsonl)."""
    from runner.batch import run_batch
    from runner.batch_settings import BatchSettings
    from runner.engines import start_engine

    work.mkdir(parents=True, exist_ok=True)
    lines = [{"custom_id": f"b{i}", "method": "POST", "url": "/v1/completions",
              "body": {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "top_p": 0.95}}
             for i in range(n)]
    source, output = work / f"bench-{uuid.uuid4().hex[:8]}.jsonl", work / f"out-{uuid.uuid4().hex[:8]}"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    settings = BatchSettings(project=stack.project, model_path=str(model_dir), model_name=stack.info["model"],
                             device=device, max_concurrency=max_concurrency, max_model_len=BENCH_MAX_MODEL_LEN,
                             engine=engine_name)  # type: ignore[arg-type]
    engine = await start_engine(settings)
    try:
        await _drive(engine, 2, max_tokens)  # warm-up, as the pipeline's runner is warm
        started = time.monotonic()
        outcome = await run_batch(settings, input_uri=str(source), output_prefix=str(output), engine=engine)
        seconds = time.monotonic() - started
    finally:
        await engine.shutdown()
    if outcome.counts.completed != n:
        raise RuntimeError(f"the batch completed {outcome.counts.completed} of {n}: see {output}")
    return Point(n, seconds, outcome.completion_tokens)


def _print_where_the_gap_is(levels: list[int], engine: dict[int, Point], pipe: dict[int, Point],
                            rows: list[dict[str, Any]]) -> None:
    """pipeline ÷ engine = (CPU the engine's process got) × (tokens it made per CPU-second) relative to the
    engine alone: the first falls when other processes share the machine, the second when the pipeline
    makes the engine itself less efficient (smaller batches, GIL contention, thread stalls)."""
    print("\n| C | engine process CPU, alone → in pipeline | tok per CPU-s, alone → in pipeline | "
          "seq/pass, alone → in pipeline | other processes' CPU in pipeline |")
    print("|---|---|---|---|---|")
    for c, row in zip(levels, rows):
        e, p = engine[c], pipe[c]
        others = ", ".join(f"{role} {p.cpu_percent(role):.0f}%" for role in p.cpu if role != "engine process")
        print(f"| {c} | {e.cpu_percent('engine process'):.0f}% → {p.cpu_percent('engine process'):.0f}% | "
              f"{e.engine_tokens_per_cpu_s:.0f} → {p.engine_tokens_per_cpu_s:.0f} | "
              f"{e.sequences_per_pass:.1f} → {p.sequences_per_pass:.1f} | {others} |")
        row.update({"engine_cpu_pct": e.cpu_percent("engine process"),
                    "pipeline_engine_process_cpu_pct": p.cpu_percent("engine process"),
                    "engine_tok_per_cpu_s": e.engine_tokens_per_cpu_s,
                    "pipeline_tok_per_engine_process_cpu_s": p.engine_tokens_per_cpu_s,
                    "engine_seq_per_pass": e.sequences_per_pass, "pipeline_seq_per_pass": p.sequences_per_pass,
                    "pipeline_other_cpu_pct": {role: p.cpu_percent(role) for role in p.cpu
                                               if role != "engine process"}})


def plot(path: Path, levels: list[int], engine: dict[int, Point], pipe: dict[int, Point], naive: Point) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(levels, [engine[c].tokens_per_s for c in levels], "o-", label="engine alone")
    ax.plot(levels, [pipe[c].tokens_per_s for c in levels], "s-", label="whole pipeline")
    ax.plot(levels, [naive.tokens_per_s for _ in levels], "^--", label="naive worker (one job at a time)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("jobs in flight (concurrency)")
    ax.set_ylabel("generated tokens / s")
    ax.set_title("llmq pipeline vs engine (bench model, this machine)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="jobs per level = concurrency × rounds (at least 4)")
    parser.add_argument("--naive-jobs", type=int, default=6)
    parser.add_argument("--device", default="cpu", help="transformers engine only")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers"],
                        help="the runner's engine, in (a), (b), (c) and (d)")
    parser.add_argument("--compare-transformers", action="store_true",
                        help="also measure the transformers engine alone, as (a')")
    parser.add_argument("--model-size", default="bench", choices=["tiny", "bench"])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local" / "bench")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "bench_pipeline.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--batch", action="store_true", help="also run (d): one batch file vs N jobs")
    parser.add_argument("--batch-n", type=int, default=64, help="prompts in (d)")
    args = parser.parse_args()
    levels = sorted(args.concurrency)
    model_dir = ensure_model(REPO / ".local" / "models" / args.model_size, args.model_size)

    os.environ.update(LOCAL_VLLM_ENV)  # the local runner's vLLM settings, for the engines this process starts
    print(f"(a) engine alone ({args.engine})", flush=True)
    engine = asyncio.run(engine_alone(model_dir, levels, max_tokens=args.max_tokens, rounds=args.rounds,
                                      device=args.device, engine_name=args.engine))
    other: dict[int, Point] | None = None
    if args.compare_transformers and args.engine != "transformers":
        print("(a') engine alone (transformers)", flush=True)
        other = asyncio.run(engine_alone(model_dir, levels, max_tokens=args.max_tokens, rounds=args.rounds,
                                         device=args.device, engine_name="transformers"))
    args.state_dir.mkdir(parents=True, exist_ok=True)
    # Twice the push slots the highest concurrency needs: jobs that end out of order must not wait
    # behind the emulator's 2 pushes per subscription.
    stack_args = ["--model-size", args.model_size, "--push-topics", str(max(1, max(levels))),
                  "--runner-env", f"LLMQ_MAX_CONCURRENCY={max(levels)}",
                  "--runner-env", f"LLMQ_MAX_INFLIGHT={max(levels) + max(levels) // 2}",
                  "--runner-env", f"LLMQ_DEVICE={args.device}", "--runner-env", f"LLMQ_ENGINE={args.engine}",
                  "--runner-env", f"LLMQ_MAX_MODEL_LEN={BENCH_MAX_MODEL_LEN}"]
    print("starting the local stack with the bench model...", flush=True)
    with started_stack(args.state_dir.resolve(), *stack_args) as stack:
        print("(b) whole pipeline", flush=True)
        pipe = pipeline(stack, levels, max_tokens=args.max_tokens, rounds=args.rounds)
        print("(c) naive worker", flush=True)
        naive = asyncio.run(naive_worker(stack, model_dir, jobs=args.naive_jobs, max_tokens=args.max_tokens,
                                         device=args.device, engine_name=args.engine))
        batch_vs_jobs: tuple[Point, Point] | None = None
        if args.batch:
            print(f"(d) {args.batch_n} prompts: as N jobs through the pipeline, then as one batch file", flush=True)
            as_jobs = pipeline_jobs(stack, args.batch_n, max_tokens=args.max_tokens)
            print(f"  jobs     N={args.batch_n:<3} {as_jobs.jobs_per_s:7.2f} jobs/s {as_jobs.tokens_per_s:8.1f} tok/s",
                  flush=True)
            as_batch = asyncio.run(batch_file(stack, model_dir, args.state_dir / "batch", args.batch_n,
                                              max_tokens=args.max_tokens, max_concurrency=max(levels),
                                              device=args.device, engine_name=args.engine))
            print(f"  batch    N={args.batch_n:<3} {as_batch.jobs_per_s:7.2f} req/s  {as_batch.tokens_per_s:8.1f} tok/s",
                  flush=True)
            batch_vs_jobs = (as_batch, as_jobs)

    print("\n| C | engine jobs/s | engine tok/s | pipeline jobs/s | pipeline tok/s | naive jobs/s | "
          "pipeline ÷ engine | pipeline ÷ naive |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for c in levels:
        e, p = engine[c], pipe[c]
        rows.append({"concurrency": c, "engine_jobs_s": e.jobs_per_s, "engine_tok_s": e.tokens_per_s,
                     "pipeline_jobs_s": p.jobs_per_s, "pipeline_tok_s": p.tokens_per_s,
                     "naive_jobs_s": naive.jobs_per_s, "naive_tok_s": naive.tokens_per_s,
                     "pipeline_over_engine": p.tokens_per_s / e.tokens_per_s,
                     "pipeline_over_naive": p.tokens_per_s / naive.tokens_per_s})
        print(f"| {c} | {e.jobs_per_s:.2f} | {e.tokens_per_s:.0f} | {p.jobs_per_s:.2f} | {p.tokens_per_s:.0f} | "
              f"{naive.jobs_per_s:.2f} | {p.tokens_per_s / e.tokens_per_s:.2f} | "
              f"{p.tokens_per_s / naive.tokens_per_s:.2f} |")
    if other is not None:
        print("\n| C | vLLM engine tok/s | transformers engine tok/s | vLLM ÷ transformers | pipeline (vLLM) ÷ transformers |")
        print("|---|---|---|---|---|")
        for c, row in zip(levels, rows):
            e, t, p = engine[c], other[c], pipe[c]
            row.update({"transformers_engine_jobs_s": t.jobs_per_s, "transformers_engine_tok_s": t.tokens_per_s})
            print(f"| {c} | {e.tokens_per_s:.0f} | {t.tokens_per_s:.0f} | {e.tokens_per_s / t.tokens_per_s:.2f} | "
                  f"{p.tokens_per_s / t.tokens_per_s:.2f} |")
    print("\n(ratios of tokens/s; jobs generate up to max_tokens and may stop earlier at an end-of-sequence token)")
    if all(engine[c].cpu and pipe[c].cpu for c in levels):
        _print_where_the_gap_is(levels, engine, pipe, rows)
    report: dict[str, Any] = {"levels": rows}
    if batch_vs_jobs is not None:
        as_batch, as_jobs = batch_vs_jobs
        print(f"\n| N = {args.batch_n} prompts | requests/s | tokens/s | seconds |\n|---|---|---|---|")
        for label, point in (("one batch file (runner.batch)", as_batch), ("N jobs (push pipeline)", as_jobs)):
            print(f"| {label} | {point.jobs_per_s:.2f} | {point.tokens_per_s:.0f} | {point.seconds:.1f} |")
        print(f"batch ÷ jobs: {as_batch.jobs_per_s / as_jobs.jobs_per_s:.2f}× requests/s, "
              f"{as_batch.tokens_per_s / as_jobs.tokens_per_s:.2f}× tokens/s")
        report["batch_vs_jobs"] = {
            "n": args.batch_n, "batch_req_s": as_batch.jobs_per_s, "batch_tok_s": as_batch.tokens_per_s,
            "jobs_req_s": as_jobs.jobs_per_s, "jobs_tok_s": as_jobs.tokens_per_s,
            "batch_over_jobs_req": as_batch.jobs_per_s / as_jobs.jobs_per_s,
            "batch_over_jobs_tok": as_batch.tokens_per_s / as_jobs.tokens_per_s}
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(args.plot, levels, engine, pipe, naive)
    print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(rows if batch_vs_jobs is None else report, indent=2))


if __name__ == "__main__":
    main()
