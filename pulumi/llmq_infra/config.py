"""Every setting of the deployment, read once from the stack's config and checked up front.

Only this module reads `pulumi.Config`. Keys live in the `llmq:` namespace (the project name);
the project also falls back to `gcp:project`, the region to `gcp:region`. Pulumi.example.yaml
documents each key. A bad combination (a generation budget past the ack deadline, a region
without L4 GPUs on Cloud Run, a runner smaller than 4 vCPU / 16 GiB) fails `pulumi preview`
before anything is created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
from jobs.constants import (
    AUTH_MODES,
    MAX_CONCURRENCY,
    MAX_INFLIGHT,
    MAX_TTL_SECONDS,
    QUOTA_QUEUED_JOBS,
    QUOTA_SUBMISSIONS_PER_MINUTE,
    RECONCILE_LEASE_LAPSED_SECONDS,
)
from llmq_infra.common import PUBLIC_MEMBERS

# Cloud Run regions that offer NVIDIA L4 GPUs (Cloud Run GPU docs; the list grows — extend it here
# when Google adds one, rather than letting a deploy fail on the first GPU revision).
L4_REGIONS = frozenset({"us-central1", "us-east4", "europe-west1", "europe-west4", "asia-southeast1"})
# Pub/Sub push: the ack deadline is also the push request's HTTP timeout, 10..600 s.
MAX_ACK_DEADLINE_SECONDS = 600
# Time a delivery needs after generation stops: the lease fence, the GCS result write, the final
# Firestore write. The generation budget must leave at least this much of the ack deadline.
FINISH_MARGIN_SECONDS = 30
# Cloud Run: request timeout up to 60 min; a GPU job task runs at most about an hour.
MAX_RUN_TIMEOUT_SECONDS = 3600
# L4 minimums on Cloud Run (4 vCPU, checked with the allowed counts below; 16 GiB).
MIN_GPU_MEMORY_GIB = 16

_NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")


class ConfigError(ValueError):
    """A stack setting is missing, malformed, or inconsistent with another."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"llmq config: {message}")


def slug(text: str, limit: int) -> str:
    """A resource-name-safe form of `text` (lowercase, digits, dashes), at most `limit` long."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return out or "m"


@dataclass(frozen=True)
class Model:
    """One served model: one runner service and one push subscription filtered on it."""

    id: str  # the name clients put in `model` (and the Pub/Sub `model` attribute)
    path: str  # folder of the weights inside the models bucket (gs://<models bucket>/<path>/)
    max_model_len: int = 8192  # prompt + completion tokens (vLLM max_model_len)
    max_tokens: int = 1024  # per-job completion cap, bounded by the generation budget
    key: str = ""  # short name used in resource names; derived from `id` when empty

    def __post_init__(self) -> None:
        _check(bool(_MODEL_ID.match(self.id)), f"model id {self.id!r} must be 1-100 characters of [A-Za-z0-9._:/-]")
        _check('"' not in self.id and "\\" not in self.id, "model ids are used in Pub/Sub filters: no quotes")
        _check(bool(self.path) and not self.path.startswith("/") and ".." not in self.path,
               f"model {self.id}: path must be a relative folder in the models bucket")
        _check(self.max_model_len >= 16, f"model {self.id}: max_model_len must be at least 16")
        _check(1 <= self.max_tokens < self.max_model_len, f"model {self.id}: max_tokens must be 1 .. max_model_len - 1")
        if not self.key:
            object.__setattr__(self, "key", slug(self.id, 16))
        _check(bool(_NAME.match(self.key)) and len(self.key) <= 16,
               f"model {self.id}: key {self.key!r} must be 2-16 characters of [a-z0-9-]")

    def catalog_entry(self) -> dict[str, Any]:
        """The model as the functions' LLMQ_MODELS lists it (jobs.catalog.ModelSpec)."""
        return {"id": self.id, "max_model_len": self.max_model_len, "max_tokens": self.max_tokens}


DEFAULT_MODELS = (
    Model(id="qwen2.5-7b-instruct", path="qwen2.5-7b-instruct", max_model_len=8192, max_tokens=1024, key="qwen2-5-7b"),
)


@dataclass(frozen=True)
class Settings:
    """The whole deployment's settings; every value has a default except the project."""

    project: str
    region: str = "us-central1"
    prefix: str = "llmq"  # prefix of every resource name: two deployments can share a project
    # Firestore
    firestore_location: str = ""  # defaults to the region
    database: str = "(default)"
    create_database: bool = True  # False: the database exists already (created outside this stack)
    # Runner image: Artifact Registry repository created here; the image is built by cloudbuild.yaml
    repository: str = "llmq"
    # The runner image (runner/Dockerfile). Empty: the image is not built yet, so this run deploys
    # everything but the GPU runner and batch job (bootstrap: the repository must exist first).
    image: str = ""
    models: tuple[Model, ...] = DEFAULT_MODELS
    # Names of the deployment's choice for its models (alias → model id; e.g. OpenAI's model names, so an
    # OpenAI batch file runs unchanged): LLMQ_MODEL_ALIASES of the API and of the batch job.
    model_aliases: dict[str, str] = field(default_factory=dict)
    # Runner (Cloud Run service, one per model, one L4 each)
    runner_cpu: int = 8
    runner_memory_gib: int = 32
    runner_max_instances: int = 2
    max_concurrency: int = MAX_CONCURRENCY  # sequences the engine runs at once (vLLM max_num_seqs)
    max_inflight: int = MAX_INFLIGHT  # pushes one instance accepts (Cloud Run concurrency); beyond: 429
    lease_seconds: int = 0  # defaults to 60 s, or a quarter of a shorter ack deadline
    startup_timeout_seconds: int = 900  # image pull + weight load + CUDA graphs before /readyz is 200
    gpu_zonal_redundancy: bool = False  # False is cheaper and best effort (separate quota)
    # Runner, deadletter and reconcile accept only Google-internal traffic (Pub/Sub push and Cloud
    # Scheduler of this project); IAM then admits only their invoker identities.
    internal_ingress: bool = True
    # Queue and time budget
    ack_deadline_seconds: int = MAX_ACK_DEADLINE_SECONDS
    generation_timeout_seconds: int = 0  # defaults to ack deadline - 60 s
    runner_timeout_seconds: int = 0  # Cloud Run request timeout; defaults to ack deadline + 60 s
    max_delivery_attempts: int = 15  # a cold start and 429s from duplicates also count as attempts
    min_backoff_seconds: int = 10
    max_backoff_seconds: int = 600
    # Store
    results_retention_days: int = MAX_TTL_SECONDS // 86400  # the longest job ttl
    batch_retention_days: int = 30
    force_destroy_buckets: bool = False  # True lets `pulumi destroy` delete buckets that hold data
    # API functions
    api_invokers: tuple[str, ...] = ()  # IAM members allowed to call submit/status ("allUsers": public)
    api_max_instances: int = 20
    # How the functions authenticate callers: "api_key" (keys in Firestore `api_keys`, created with
    # `python -m scripts.api_keys`) or "iam" (Google ID tokens checked by IAM; needs non-public invokers).
    api_auth_mode: str = "api_key"
    quota_submissions_per_minute: int = QUOTA_SUBMISSIONS_PER_MINUTE  # per tenant; 0: no limit
    quota_queued_jobs: int = QUOTA_QUEUED_JOBS  # per tenant; 0: no limit
    # Maintenance
    reconcile_schedule: str = "*/5 * * * *"
    reconcile_queued_seconds: int = 900  # longer than a GPU cold start, or every cold start republishes
    reconcile_lease_lapsed_seconds: int = RECONCILE_LEASE_LAPSED_SECONDS
    # Nightly batch
    batch_schedule: str = "0 2 * * *"
    batch_time_zone: str = "Etc/UTC"
    batch_task_timeout_seconds: int = MAX_RUN_TIMEOUT_SECONDS
    batch_max_retries: int = 3  # GPU tasks are terminated on maintenance; parts resume on retry
    # Observability
    alert_emails: tuple[str, ...] = ()
    oldest_unacked_alert_seconds: int = 1800
    runner_error_ratio_alert: float = 0.1
    labels: dict[str, str] = field(default_factory=lambda: {"app": "llmq"})

    def __post_init__(self) -> None:
        # Fill the derived defaults, then check every setting and combination.
        if not self.firestore_location:
            object.__setattr__(self, "firestore_location", self.region)
        if not self.generation_timeout_seconds:
            object.__setattr__(self, "generation_timeout_seconds", self.ack_deadline_seconds - 60)
        if not self.lease_seconds:
            object.__setattr__(self, "lease_seconds", min(60, max(5, self.ack_deadline_seconds // 4)))
        if not self.runner_timeout_seconds:
            object.__setattr__(self, "runner_timeout_seconds",
                               min(self.ack_deadline_seconds + 60, MAX_RUN_TIMEOUT_SECONDS))
        self._validate()

    def _validate(self) -> None:
        _check(bool(re.match(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", self.project)), f"project id {self.project!r} is invalid")
        _check(self.region in L4_REGIONS,
               f"region {self.region!r} has no NVIDIA L4 on Cloud Run; use one of {sorted(L4_REGIONS)}")
        _check(bool(_NAME.match(self.prefix)) and len(self.prefix) <= 8, "prefix must be 2-8 characters of [a-z0-9-]")
        _check(bool(self.database), "database must not be empty")
        _check(bool(_NAME.match(self.repository)), "repository must be lowercase letters, digits and dashes")
        _check(not self.image or ":" in self.image.rsplit("/", 1)[-1] or "@sha256:" in self.image,
               "image must carry a tag or digest")
        # Models
        _check(len(self.models) >= 1, "at least one model is needed")
        ids = [m.id for m in self.models]
        keys = [m.key for m in self.models]
        _check(len(set(ids)) == len(ids), "model ids must be unique")
        _check(len(set(keys)) == len(keys), "model keys must be unique (set `key` where ids slug alike)")
        for alias, target in self.model_aliases.items():
            _check(target in ids, f"modelAliases: {alias!r} names {target!r}, which is not one of the models")
            _check(alias not in ids, f"modelAliases: {alias!r} is already a model's id")
        # Runner size: L4 needs ≥ 4 vCPU and ≥ 16 GiB
        _check(self.runner_cpu in (4, 6, 8), "runner_cpu must be 4, 6 or 8 with one L4")
        _check(MIN_GPU_MEMORY_GIB <= self.runner_memory_gib <= 32, "runner_memory_gib must be 16..32 with one L4")
        _check(1 <= self.runner_max_instances <= 20, "runner_max_instances must be 1..20 (GPU quota, cost bound)")
        _check(1 <= self.max_concurrency <= 512, "max_concurrency must be 1..512")
        _check(self.max_concurrency <= self.max_inflight <= 1000,
               "max_inflight must be at least max_concurrency and at most 1000 (Cloud Run concurrency)")
        _check(60 <= self.startup_timeout_seconds <= MAX_RUN_TIMEOUT_SECONDS, "startup_timeout_seconds must be 60..3600")
        # The time budget: generation + finish margin ≤ ack deadline ≤ Cloud Run request timeout
        _check(10 <= self.ack_deadline_seconds <= MAX_ACK_DEADLINE_SECONDS, "ack_deadline_seconds must be 10..600")
        _check(10 <= self.generation_timeout_seconds <= self.ack_deadline_seconds - FINISH_MARGIN_SECONDS,
               f"generation_timeout_seconds must leave {FINISH_MARGIN_SECONDS} s of the ack deadline "
               f"({self.ack_deadline_seconds} s) to finish the job")
        _check(self.ack_deadline_seconds <= self.runner_timeout_seconds <= MAX_RUN_TIMEOUT_SECONDS,
               "runner_timeout_seconds must be at least the ack deadline (and at most 3600)")
        _check(5 <= self.lease_seconds < self.ack_deadline_seconds, "lease_seconds must be 5 .. ack deadline - 1")
        _check(5 <= self.max_delivery_attempts <= 100, "max_delivery_attempts must be 5..100 (Pub/Sub's range)")
        _check(0 <= self.min_backoff_seconds <= self.max_backoff_seconds <= 600,
               "backoff must satisfy 0 <= min_backoff_seconds <= max_backoff_seconds <= 600")
        # Store
        _check(1 <= self.results_retention_days <= 3650, "results_retention_days must be 1..3650")
        _check(1 <= self.batch_retention_days <= 3650, "batch_retention_days must be 1..3650")
        # Functions and schedules
        _check(1 <= self.api_max_instances <= 1000, "api_max_instances must be 1..1000")
        _check(all(m.startswith(("user:", "group:", "serviceAccount:", "domain:")) or m == "allUsers"
                   for m in self.api_invokers), "api_invokers must be IAM members (user:, group:, ...) or allUsers")
        _check(self.api_auth_mode in AUTH_MODES, f"api_auth_mode must be one of {list(AUTH_MODES)}")
        _check(self.api_auth_mode != "iam" or not set(self.api_invokers) & set(PUBLIC_MEMBERS),
               "api_auth_mode iam trusts tokens IAM has verified: api_invokers must not include allUsers")
        _check(self.quota_submissions_per_minute >= 0 and self.quota_queued_jobs >= 0,
               "quota_submissions_per_minute and quota_queued_jobs must be >= 0 (0: no limit)")
        _check(len(self.reconcile_schedule.split()) == 5, "reconcile_schedule must be a 5-field cron expression")
        _check(len(self.batch_schedule.split()) == 5, "batch_schedule must be a 5-field cron expression")
        _check(60 <= self.reconcile_queued_seconds <= 86400, "reconcile_queued_seconds must be 60..86400")
        _check(self.reconcile_lease_lapsed_seconds >= 10, "reconcile_lease_lapsed_seconds must be at least 10")
        _check(60 <= self.batch_task_timeout_seconds <= MAX_RUN_TIMEOUT_SECONDS,
               "batch_task_timeout_seconds must be 60..3600 (a GPU job task runs at most about an hour)")
        _check(0 <= self.batch_max_retries <= 10, "batch_max_retries must be 0..10")
        _check(all("@" in e for e in self.alert_emails), "alert_emails must be e-mail addresses")
        _check(self.oldest_unacked_alert_seconds >= 60, "oldest_unacked_alert_seconds must be at least 60")
        _check(0 < self.runner_error_ratio_alert <= 1, "runner_error_ratio_alert must be in (0, 1]")
        for suffix in self.account_suffixes():
            self.account_id(suffix)  # every service account id fits GCP's 6-30 characters

    # Names --------------------------------------------------------------------------------------
    @property
    def registry_host(self) -> str:
        return f"{self.region}-docker.pkg.dev"

    @property
    def image_built(self) -> bool:
        return bool(self.image)

    def suggested_image(self, tag: str = "v1") -> str:
        """Where cloudbuild.yaml pushes the runner image (the repository this stack creates)."""
        return f"{self.registry_host}/{self.project}/{self.repository}/runner:{tag}"

    @property
    def default_model(self) -> Model:
        return self.models[0]

    def name(self, suffix: str) -> str:
        """A resource's cloud name: `<prefix>-<suffix>`."""
        return f"{self.prefix}-{suffix}"

    def account_suffixes(self) -> list[str]:
        fixed = ["submit", "status", "completions", "files", "webhooks", "wh-push", "deadletter", "reconcile", "build", "push", "dl-push", "sched-rec",
                 "batch", "workflow", "sched-batch"]
        return fixed + [f"run-{m.key}" for m in self.models]

    def account_id(self, suffix: str) -> str:
        """A service account id (6-30 characters): one per component identity."""
        account = self.name(suffix)
        _check(6 <= len(account) <= 30 and bool(_NAME.match(account)),
               f"service account id {account!r} must be 6-30 characters; shorten the prefix or the model key")
        return account


def _models(raw: Any) -> tuple[Model, ...]:
    if raw is None:
        return DEFAULT_MODELS
    _check(isinstance(raw, list) and all(isinstance(m, dict) for m in raw),
           "models must be a list of objects: [{id, path, max_model_len, max_tokens}]")
    known = {"id", "path", "max_model_len", "max_tokens", "key"}
    models = []
    for entry in raw:
        unknown = set(entry) - known
        _check(not unknown, f"unknown model field(s) {sorted(unknown)}; known: {sorted(known)}")
        _check(isinstance(entry.get("id"), str), "every model needs an `id`")
        models.append(Model(
            id=entry["id"],
            path=str(entry.get("path") or entry["id"]),
            max_model_len=int(entry.get("max_model_len", 8192)),
            max_tokens=int(entry.get("max_tokens", 1024)),
            key=str(entry.get("key", "")),
        ))
    return tuple(models)


def _aliases(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    _check(isinstance(raw, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()),
           "modelAliases must be an object of alias → model id")
    return dict(raw)


def _strings(raw: Any, key: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    _check(isinstance(raw, list) and all(isinstance(s, str) for s in raw), f"{key} must be a list of strings")
    return tuple(raw)


def load() -> Settings:
    """Read the stack's settings (`llmq:*`, falling back to `gcp:project` / `gcp:region`)."""
    cfg = pulumi.Config("llmq")
    gcp = pulumi.Config("gcp")
    project = cfg.get("project") or gcp.get("project")
    _check(bool(project), "set the project: `pulumi config set gcp:project <id>`")
    values: dict[str, Any] = {
        "project": project,
        "region": cfg.get("region") or gcp.get("region"),
        "prefix": cfg.get("prefix"),
        "firestore_location": cfg.get("firestoreLocation"),
        "database": cfg.get("database"),
        "create_database": cfg.get_bool("createDatabase"),
        "repository": cfg.get("repository"),
        "image": cfg.get("image"),
        "models": _models(cfg.get_object("models")),
        "model_aliases": _aliases(cfg.get_object("modelAliases")),
        "runner_cpu": cfg.get_int("runnerCpu"),
        "runner_memory_gib": cfg.get_int("runnerMemoryGib"),
        "runner_max_instances": cfg.get_int("runnerMaxInstances"),
        "max_concurrency": cfg.get_int("maxConcurrency"),
        "max_inflight": cfg.get_int("maxInflight"),
        "lease_seconds": cfg.get_int("leaseSeconds"),
        "startup_timeout_seconds": cfg.get_int("startupTimeoutSeconds"),
        "gpu_zonal_redundancy": cfg.get_bool("gpuZonalRedundancy"),
        "internal_ingress": cfg.get_bool("internalIngress"),
        "ack_deadline_seconds": cfg.get_int("ackDeadlineSeconds"),
        "generation_timeout_seconds": cfg.get_int("generationTimeoutSeconds"),
        "runner_timeout_seconds": cfg.get_int("runnerTimeoutSeconds"),
        "max_delivery_attempts": cfg.get_int("maxDeliveryAttempts"),
        "min_backoff_seconds": cfg.get_int("minBackoffSeconds"),
        "max_backoff_seconds": cfg.get_int("maxBackoffSeconds"),
        "results_retention_days": cfg.get_int("resultsRetentionDays"),
        "batch_retention_days": cfg.get_int("batchRetentionDays"),
        "force_destroy_buckets": cfg.get_bool("forceDestroyBuckets"),
        "api_invokers": _strings(cfg.get_object("apiInvokers"), "apiInvokers"),
        "api_max_instances": cfg.get_int("apiMaxInstances"),
        "api_auth_mode": cfg.get("apiAuthMode"),
        "quota_submissions_per_minute": cfg.get_int("quotaSubmissionsPerMinute"),
        "quota_queued_jobs": cfg.get_int("quotaQueuedJobs"),
        "reconcile_schedule": cfg.get("reconcileSchedule"),
        "reconcile_queued_seconds": cfg.get_int("reconcileQueuedSeconds"),
        "reconcile_lease_lapsed_seconds": cfg.get_int("reconcileLeaseLapsedSeconds"),
        "batch_schedule": cfg.get("batchSchedule"),
        "batch_time_zone": cfg.get("batchTimeZone"),
        "batch_task_timeout_seconds": cfg.get_int("batchTaskTimeoutSeconds"),
        "batch_max_retries": cfg.get_int("batchMaxRetries"),
        "alert_emails": _strings(cfg.get_object("alertEmails"), "alertEmails"),
        "oldest_unacked_alert_seconds": cfg.get_int("oldestUnackedAlertSeconds"),
        "runner_error_ratio_alert": cfg.get_float("runnerErrorRatioAlert"),
    }
    # Unset keys keep the dataclass defaults.
    return Settings(**{k: v for k, v in values.items() if v is not None})
