"""Builds the API's BatchService from settings, once per process, on first use."""

from __future__ import annotations

from functools import lru_cache

from jobs.adapters.batch_files import BatchFiles, BucketInputs
from jobs.adapters.batch_launcher import CloudRunBatchLauncher, LocalBatchLauncher
from jobs.adapters.clients import storage_client
from jobs.adapters.wiring import batch_store
from jobs.batch_service import BatchService
from jobs.batches import BatchLauncher
from jobs.logs import configure_logging
from jobs.settings import api_settings


@lru_cache(maxsize=1)
def batch_service() -> BatchService:
    configure_logging()
    settings = api_settings()
    launcher: BatchLauncher
    if settings.batch_launcher == "local":
        launcher = LocalBatchLauncher(log_dir=settings.batch_log_dir, max_running=settings.batch_local_max_running)
    else:
        launcher = CloudRunBatchLauncher(project=settings.project, region=settings.region, job=settings.batch_job)
    return BatchService(
        store=batch_store(),
        inputs=BucketInputs(BatchFiles(storage_client(settings.project))),
        launcher=launcher,
        bucket=settings.batch_bucket,
        ttl_seconds=settings.batch_ttl_seconds,
    )
