"""Settings of the batch runner (`python -m runner.batch`, the Cloud Run job), read once from the
environment: the runner's own LLMQ_* settings (engine, model) plus the batch ones, and Cloud Run's task
variables. Nothing else in the batch runner reads os.environ."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from runner.settings import RunnerSettings


class BatchSettings(RunnerSettings):
    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore", protected_namespaces=())

    # Cloud Run sets these in every task of a job execution: the file is dealt across tasks by line.
    task_index: int = Field(default=0, ge=0, validation_alias=AliasChoices("CLOUD_RUN_TASK_INDEX", "LLMQ_TASK_INDEX"))
    task_count: int = Field(default=1, ge=1, validation_alias=AliasChoices("CLOUD_RUN_TASK_COUNT", "LLMQ_TASK_COUNT"))
    # Requests in flight in the engine = this × the engine's max_concurrency: enough queued that the
    # engine never waits for the next one, bounded so memory and the cancel latency stay small.
    batch_inflight_factor: float = Field(default=3.0, gt=0)
    # batches/{id} gets at most one progress write per this many seconds per task (Firestore sustains
    # about 1 write/s per document; with N tasks each writes every N × this).
    batch_progress_interval_seconds: float = Field(default=1.0, gt=0)
    # gs:// output is uploaded this often (see jobs/adapters/batch_files.py): what a crash can lose.
    batch_checkpoint_seconds: float = Field(default=30.0, gt=0)
    # A request whose engine call fails transiently is tried this many times before its error line.
    batch_request_attempts: int = Field(default=3, ge=1)
    batch_ttl_seconds: int = Field(default=30 * 86400, ge=3600)  # batches/{id} expire_at
    batch_work_dir: str = ""  # local working copies of gs:// files; empty: the system temp dir
    # The deployment's model aliases (alias → model id, as the API's LLMQ_MODEL_ALIASES): a line may name
    # this runner's model by one of its aliases (OpenAI's model names in an OpenAI batch file, say).
    model_aliases: dict[str, str] = Field(default_factory=dict)


@lru_cache(maxsize=1)
def batch_settings() -> BatchSettings:
    return BatchSettings()
