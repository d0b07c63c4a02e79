"""The runner's Prometheus metrics, served at `GET /metrics` (names prefixed `llmq_`, CONTRACT §10).

Counters and histograms move as pushes are answered and jobs finish; the gauges (in flight, the engine's
running and waiting requests) are read from the runner's state when the endpoint is scraped.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from jobs.engine import EngineStats

# Its own registry: the endpoint shows llmq's metrics, not whatever else the process's libraries register.
REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

INFLIGHT = Gauge("llmq_inflight", "Pushes this instance is working on", registry=REGISTRY)
ENGINE_RUNNING = Gauge("llmq_engine_running", "Requests the engine runs now", registry=REGISTRY)
ENGINE_WAITING = Gauge("llmq_engine_waiting", "Requests the engine holds but does not run yet", registry=REGISTRY)
PUSHES = Counter("llmq_push_answers", "Pushes answered, by HTTP status (429: saturated, 503: retry later)",
                 ["code"], registry=REGISTRY)
JOBS = Counter("llmq_jobs_finished", "Jobs this instance ended, by outcome", ["outcome"], registry=REGISTRY)
LOST_CLAIMS = Counter("llmq_lost_claims", "Deliveries that lost their job's lease before finishing",
                      registry=REGISTRY)
QUEUE_WAIT = Histogram("llmq_queue_wait_seconds", "From submission to claim", buckets=_SECONDS, registry=REGISTRY)
TIME_TO_FIRST_TOKEN = Histogram("llmq_time_to_first_token_seconds", "From the engine call to the first token",
                                buckets=_SECONDS, registry=REGISTRY)
GENERATION = Histogram("llmq_generation_seconds", "Time in the engine, per job", buckets=_SECONDS,
                       registry=REGISTRY)
JOB_LATENCY = Histogram("llmq_job_latency_seconds", "From submission to the finished document, per job",
                        buckets=_SECONDS, registry=REGISTRY)
TOKENS_PER_SECOND = Histogram("llmq_tokens_per_second", "Completion tokens per second of generation, per job",
                              buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500), registry=REGISTRY)


def observe_job(timings: dict[str, float], *, latency_seconds: float) -> None:
    """A finished job: its end-to-end latency and its generation's timings (the job document's `metrics`)."""
    JOB_LATENCY.observe(latency_seconds)
    QUEUE_WAIT.observe(timings["queue_seconds"])
    TIME_TO_FIRST_TOKEN.observe(timings["time_to_first_token_seconds"])
    GENERATION.observe(timings["generation_seconds"])
    TOKENS_PER_SECOND.observe(timings["tokens_per_second"])


def render(*, inflight: int, engine: EngineStats | None) -> bytes:
    """The exposition text, with the gauges read now."""
    INFLIGHT.set(inflight)
    ENGINE_RUNNING.set(engine.running if engine is not None else 0)
    ENGINE_WAITING.set(engine.waiting if engine is not None else 0)
    return generate_latest(REGISTRY)
