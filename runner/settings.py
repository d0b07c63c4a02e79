"""Runner settings, read once from LLMQ_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs import constants
from jobs.tracing import TraceExporter


class RunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore", protected_namespaces=())

    project: str = "local-project"
    database: str = "(default)"
    results_bucket: str = "llmq-results"
    # Webhooks: the deliveries topic the end of a job is announced on (empty: none is; jobs/webhooks.py).
    webhook_topic: str = ""

    engine: Literal["vllm", "transformers"] = "vllm"
    model_path: str = ".local/models/tiny"  # a local folder or a GCS FUSE mount
    model_name: str = "tiny-llama"  # the name clients use in `model`
    device: str = "auto"  # transformers engine: cpu, cuda or auto
    max_model_len: int = 2048
    # vLLM only: the share of GPU memory for weights and KV cache, and the weight loader
    # (`auto`, or `runai_streamer` to stream weights from gs:// faster than a FUSE mount reads them).
    gpu_memory_utilization: float = 0.90
    load_format: str = "auto"
    # vLLM only: a fixed KV-cache size in bytes instead of a share of the device's memory. The local stack sets
    # it: on CPU vLLM reads gpu_memory_utilization as a share of the NUMA node's RAM and refuses to start when
    # that much is not free. None in production (the GPU's share above).
    kv_cache_memory_bytes: int | None = None
    # vLLM only: skip torch.compile and CUDA graphs. Measured here on CPU with the tiny model: ready in 20.7 s
    # eager against 46.6 s compiled; the local stack runs eager, production compiles (False).
    enforce_eager: bool = False
    max_concurrency: int = constants.MAX_CONCURRENCY  # sequences the engine runs at once (vLLM max_num_seqs)
    # Push requests one instance accepts; beyond it the runner answers 429 at once. Somewhat more
    # than max_concurrency, so the engine never idles between requests.
    max_inflight: int = constants.MAX_INFLIGHT
    # Of those, the slots only `interactive` jobs may take: `batch` jobs are answered 429 (and redelivered
    # after the subscription's backoff) once max_inflight - interactive_reserved_slots are in hand, so an
    # interactive job always finds a slot, and the engine's priority scheduling runs it first.
    interactive_reserved_slots: int = 8
    # A batch push that finds no batch slot waits for one (up to max_waiting_batch_pushes of them, for at most
    # batch_wait_seconds) rather than being answered 429 at once: a refused push comes back only after the
    # subscription's backoff (10 s and more in production; the emulator holds it back for minutes). The
    # runner's Cloud Run concurrency is max_inflight + max_waiting_batch_pushes, so waiting batch pushes never
    # keep an interactive push out.
    max_waiting_batch_pushes: int = constants.MAX_WAITING_BATCH_PUSHES
    batch_wait_seconds: float = 30.0

    # A delivery holds a job under a lease it renews while generating; a crashed runner's job is
    # taken over once its lease lapses. Must stay below the subscription's ack deadline.
    lease_seconds: float = 30.0
    # Generation stops (finish_reason "length") past this budget, well inside the ack deadline.
    generation_timeout_seconds: float = 300.0
    # Push authentication: with an audience set, only pushes whose OIDC token verifies for it (and,
    # if set, names the push service account) are accepted; others get 401. Off in the local stack.
    push_audience: str | None = None
    push_service_account: str | None = None
    push_certs_url: str = constants.GOOGLE_CERTS_URL

    # Where spans go (jobs/tracing.py): "gcp" Cloud Trace, "file" JSON lines under trace_dir (the local
    # stack), "none" nowhere.
    trace_exporter: TraceExporter = "none"
    trace_dir: str = ""

    # The runner checks its engine this often and exits when it is dead (as it does when a push finds it dead).
    health_check_interval_seconds: float = 5.0

    # Partial output of `stream` jobs is written at most this often (Firestore: ~1 write/s/doc).
    stream_interval_seconds: float = constants.STREAM_INTERVAL_SECONDS

    @model_validator(mode="after")
    def _push_tokens_name_their_account(self) -> RunnerSettings:
        # An audience alone would let any Google identity that mints a token for it push jobs.
        if self.push_audience and not self.push_service_account:
            raise ValueError("push_audience needs push_service_account")
        return self

    @model_validator(mode="after")
    def _batch_keeps_a_slot(self) -> RunnerSettings:
        if not 0 <= self.interactive_reserved_slots < self.max_inflight:
            raise ValueError("interactive_reserved_slots must be at least 0 and below max_inflight")
        return self


@lru_cache(maxsize=1)
def runner_settings() -> RunnerSettings:
    return RunnerSettings()
