"""Settings of the API functions (submit, status), read once from the environment.

Every variable is prefixed LLMQ_; nothing else in the functions reads os.environ.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs import constants
from jobs.catalog import ModelCatalog, ModelSpec
from jobs.tracing import TraceExporter


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore")

    project: str = "local-project"  # GCP project id
    database: str = "(default)"  # Firestore database id
    # Topics jobs are published to; more than one only in the local stack (push concurrency).
    topics: list[str] = Field(default_factory=lambda: [constants.JOBS_TOPIC])
    # ...and the topics `priority: "batch"` jobs go to: their own subscriptions, so that a backlog of them
    # never delays an interactive job (Pub/Sub has no priorities within a subscription).
    batch_priority_topics: list[str] = Field(default_factory=lambda: [constants.JOBS_TOPIC + constants.BATCH_TOPIC_SUFFIX])
    # The deployment's models, default first (JSON list of ModelSpec).
    models: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec(id="tiny-llama")])
    # Names of the deployment's choice for its models (alias → model id), e.g. OpenAI's model names.
    model_aliases: dict[str, str] = Field(default_factory=dict)
    max_body_bytes: int = 1024 * 1024  # larger bodies get 413 before parsing
    max_wait_seconds: int = constants.MAX_WAIT_SECONDS  # bound of GET /v1/jobs/{id}?wait=N
    publish_timeout_seconds: float = 10.0
    # POST /v1/chat/completions and /v1/completions wait this long for their job (then cancel it and answer
    # 504); below the completions function's timeout, so the answer is ours, not the platform's.
    completion_timeout_seconds: float = Field(default=300.0, gt=0)
    # Admission (jobs/adapters/admission.py): requests one instance works on at once, and the longest a
    # request may queue for a slot; one that would wait longer is answered 503 at once. Half the submit
    # function's 60 s timeout: shed only what would otherwise time out; shorter waits are queueing.
    admission_slots: int = 32
    admission_max_wait_seconds: float = 30.0
    # Who may call the API (jobs/adapters/caller.py): "api_key" (Authorization: Bearer <key>, keys
    # hashed in Firestore `api_keys`) or "iam" (Cloud Functions IAM checks Google ID tokens; the
    # token's email maps to a tenant through iam_tenants, or is the tenant itself).
    auth_mode: constants.AuthMode = "api_key"
    iam_tenants: dict[str, str] = Field(default_factory=dict)
    # In api_key mode, Google service accounts that may call with an ID token instead of a key, verified
    # here (jobs/adapters/id_tokens.py), and the tenant each acts as: the nightly workflow, whose Workflows
    # OIDC auth cannot send a key. Their tokens must name token_audience. Empty: keys only.
    token_tenants: dict[str, str] = Field(default_factory=dict)
    # Who verifies those tokens: "cloud_run" where the API is not public (IAM checks them at the door, for
    # the function's URL as audience, and strips their signature), "function" where it is public (verified
    # here, for token_audience, with Google's certificates).
    token_checked_by: Literal["cloud_run", "function"] = "cloud_run"
    token_audience: str = ""
    token_certs_url: str = constants.GOOGLE_CERTS_URL
    # Where spans go (jobs/tracing.py): "gcp" Cloud Trace, "file" JSON lines under trace_dir (the local
    # stack), "none" nowhere (trace ids are still made and travel with each job).
    trace_exporter: TraceExporter = "none"
    # The function's name in its spans: Cloud Run's K_SERVICE (the local stack sets it too).
    service_name: str = Field(default="api", validation_alias="K_SERVICE")
    trace_dir: str = ""
    # Per-tenant quotas (0: no limit), counted without a hot document (jobs/quotas.py).
    quota_submissions_per_minute: int = constants.QUOTA_SUBMISSIONS_PER_MINUTE
    quota_queued_jobs: int = constants.QUOTA_QUEUED_JOBS
    # Prompts longer than this many characters per token of the model's context cannot fit: 400.
    max_prompt_chars_per_token: int = 16
    # The reconciler re-publishes jobs queued longer than this, or whose lease lapsed this long ago.
    reconcile_queued_seconds: float = 300
    reconcile_lease_lapsed_seconds: float = constants.RECONCILE_LEASE_LAPSED_SECONDS
    # ...and ends batches whose document nobody wrote for this long (a running batch writes about once
    # a second; loading the model takes minutes, so this stays well above that).
    reconcile_batch_stale_seconds: float = 3600
    # ...and announces the webhook events left pending by a job or batch that ended at least this long ago.
    reconcile_announce_after_seconds: float = 30
    # Batches (docs/BATCH.md): the bucket with inbox/, outbox/ and inbox-ondemand/ (inline JSONL).
    batch_bucket: str = "llmq-batch"
    # POST /v1/batches bodies (inline JSONL included) may be this large; Cloud Functions take 32 MB.
    max_batch_body_bytes: int = 16 * 1024 * 1024
    # POST /v1/files: the whole multipart request may be this large (Cloud Run's request limit, 32 MiB);
    # larger batch inputs go to the batch bucket and are named by `input_uri`.
    max_upload_bytes: int = 32 * 1024 * 1024
    # How an on-demand batch starts: "cloudrun" runs the batch job (region + batch_job) with per-batch
    # arguments; "local" starts `python -m runner.batch` as a subprocess (the local stack).
    batch_launcher: Literal["cloudrun", "local"] = "cloudrun"
    region: str = "us-central1"
    batch_job: str = "llmq-batch"  # the Cloud Run job's name
    batch_log_dir: str = ""  # local launcher: where each batch's log goes; empty: discarded
    batch_local_max_running: int = 2  # local launcher: runners at once (each loads a model); others wait
    batch_ttl_seconds: int = 30 * 86400  # batches/{id} expire_at
    # Webhooks (jobs/webhooks.py): the deliveries topic (empty: no webhooks are announced), and whether
    # endpoints may be http://127.0.0.1 (the local stack only: production takes https to public addresses).
    webhook_topic: str = ""
    webhook_allow_loopback: bool = False
    # Whether endpoint host names are resolved (DNS); off in the local stack, which takes literal addresses only
    # (its tests never send a name lookup off the machine).
    webhook_resolve_names: bool = True
    # The tenants that may ask for a batch of an inbox/ object (the nightly workflow's); nobody by default.
    nightly_tenants: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _aliases_name_served_models(self) -> ApiSettings:
        ModelCatalog(self.models, self.model_aliases)  # raises for an alias of nothing served, or of an id
        return self

    @model_validator(mode="after")
    def _tokens_name_their_audience(self) -> ApiSettings:
        if self.token_tenants and self.token_checked_by == "function" and not self.token_audience:
            raise ValueError("token_tenants checked by the function need token_audience")
        return self

    @property
    def catalog(self) -> ModelCatalog:
        return ModelCatalog(self.models, self.model_aliases)


@lru_cache(maxsize=1)
def api_settings() -> ApiSettings:
    return ApiSettings()
