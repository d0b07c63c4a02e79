"""Builds the API's JobService and the stores from settings, once per process, on first use."""

from __future__ import annotations

from functools import lru_cache

from jobs.adapters.admission import Admission
from jobs.adapters.batch_store import FirestoreBatchStore
from jobs.adapters.clients import firestore_client, publisher_client
from jobs.adapters.firestore_store import FirestoreJobStore
from jobs.adapters.pubsub_publisher import PubSubPublisher
from jobs.logs import configure_logging
from jobs.quotas import Quota
from jobs.service import JobService
from jobs.settings import api_settings


@lru_cache(maxsize=1)
def job_store() -> FirestoreJobStore:
    configure_logging()
    settings = api_settings()
    return FirestoreJobStore(firestore_client(settings.project, settings.database))


@lru_cache(maxsize=1)
def batch_store() -> FirestoreBatchStore:
    settings = api_settings()
    return FirestoreBatchStore(firestore_client(settings.project, settings.database))


@lru_cache(maxsize=1)
def publisher() -> PubSubPublisher:
    settings = api_settings()
    return PubSubPublisher(publisher_client(), project=settings.project, topics=settings.topics,
                           batch_topics=settings.batch_priority_topics, timeout=settings.publish_timeout_seconds)


@lru_cache(maxsize=1)
def job_service() -> JobService:
    settings = api_settings()
    return JobService(
        store=job_store(), publisher=publisher(), catalog=settings.catalog,
        quota=Quota(submissions_per_minute=settings.quota_submissions_per_minute,
                    queued_jobs=settings.quota_queued_jobs),
        max_prompt_chars_per_token=settings.max_prompt_chars_per_token,
    )


@lru_cache(maxsize=1)
def admission() -> Admission:
    settings = api_settings()
    return Admission(slots=settings.admission_slots, max_wait_seconds=settings.admission_max_wait_seconds)
