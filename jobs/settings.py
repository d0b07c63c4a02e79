"""Settings of the API functions (submit, status), read once from the environment.

Every variable is prefixed LLMQ_; nothing else in the functions reads os.environ.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.catalog import ModelCatalog, ModelSpec


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore")

    project: str = "local-project"  # GCP project id
    database: str = "(default)"  # Firestore database id
    # Topics jobs are published to; more than one only in the local stack (push concurrency).
    topics: list[str] = Field(default_factory=lambda: ["jobs"])
    # The deployment's models, default first (JSON list of ModelSpec).
    models: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec(id="tiny-llama")])
    max_body_bytes: int = 1024 * 1024  # larger bodies get 413 before parsing
    max_wait_seconds: int = 60  # bound of GET /v1/jobs/{id}?wait=N
    publish_timeout_seconds: float = 10.0
    tenant: str = "public"  # the tenant of unauthenticated deployments
    # The reconciler re-publishes jobs queued longer than this, or whose lease lapsed this long ago.
    reconcile_queued_seconds: float = 300
    reconcile_lease_lapsed_seconds: float = 120

    @property
    def catalog(self) -> ModelCatalog:
        return ModelCatalog(self.models)


@lru_cache(maxsize=1)
def api_settings() -> ApiSettings:
    return ApiSettings()
