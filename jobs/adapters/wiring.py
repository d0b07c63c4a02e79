"""The API functions' composition root: builds the ports from settings (Firestore, Pub/Sub) and the services
over them, once per process, on first use. `use_ports` swaps in other ports (the fast tests' in-memory ones)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from jobs import tracing
from jobs.adapters.admission import Admission
from jobs.adapters.api_key_store import FirestoreApiKeyStore
from jobs.adapters.batch_files import BatchFiles, BucketInputs
from jobs.adapters.batch_launcher import CloudRunBatchLauncher, LocalBatchLauncher
from jobs.adapters.batch_store import FirestoreBatchStore
from jobs.adapters.clients import firestore_client, publisher_client, storage_client
from jobs.adapters.dns import no_names, system_resolver
from jobs.adapters.file_store import FirestoreFileStore, GcsContents
from jobs.adapters.firestore_store import FirestoreJobStore
from jobs.adapters.id_tokens import IdTokenVerifier
from jobs.adapters.pubsub_publisher import PubSubPublisher
from jobs.adapters.webhook_store import FirestoreEndpointStore, PubSubDeliveryQueue
from jobs.auth import ApiKeyAuthenticator, ApiKeyStore
from jobs.batch_service import BatchService
from jobs.batches import BatchInputs, BatchLauncher, BatchStore
from jobs.delivery import Deliverer, Sender
from jobs.files import FileContents, FileService, FileStore
from jobs.ports import JobStore, Publisher
from jobs.quotas import Quota
from jobs.service import JobService, utcnow
from jobs.settings import api_settings
from jobs.webhooks import Announcer, DeliveryQueue, EndpointService, EndpointStore, Resolver


@dataclass(frozen=True)
class ApiPorts:
    jobs: JobStore
    batches: BatchStore
    publisher: Publisher
    api_keys: ApiKeyStore
    batch_inputs: BatchInputs
    batch_launcher: BatchLauncher
    files: FileStore
    file_contents: FileContents
    endpoints: EndpointStore
    deliveries: DeliveryQueue
    sender: Sender
    resolve: Resolver


_substitute: ApiPorts | None = None


def use_ports(ports: ApiPorts | None) -> None:
    """Serve the functions over `ports` from now on (None: back to the cloud clients); the services are rebuilt."""
    global _substitute
    _substitute = ports
    for cached in (job_store, batch_store, file_store, publisher, _api_keys, _batch_inputs, _batch_launcher,
                   _file_contents, endpoint_store, _delivery_queue, _sender, announcer, endpoint_service, deliverer,
                   job_service, batch_service, file_service, authenticator, token_verifier, admission):
        cached.cache_clear()


# Each port is built on first use only: a function builds the clients it calls (the status function never
# makes a Pub/Sub publisher, only submit makes a Cloud Storage client and a batch launcher).


@lru_cache(maxsize=1)
def job_store() -> JobStore:
    if _substitute is not None:
        return _substitute.jobs
    settings = api_settings()
    return FirestoreJobStore(firestore_client(settings.project, settings.database))


@lru_cache(maxsize=1)
def batch_store() -> BatchStore:
    if _substitute is not None:
        return _substitute.batches
    settings = api_settings()
    return FirestoreBatchStore(firestore_client(settings.project, settings.database))


@lru_cache(maxsize=1)
def file_store() -> FileStore:
    if _substitute is not None:
        return _substitute.files
    settings = api_settings()
    return FirestoreFileStore(firestore_client(settings.project, settings.database))


@lru_cache(maxsize=1)
def _file_contents() -> FileContents:
    if _substitute is not None:
        return _substitute.file_contents
    return GcsContents(storage_client(api_settings().project))


@lru_cache(maxsize=1)
def endpoint_store() -> EndpointStore:
    if _substitute is not None:
        return _substitute.endpoints
    settings = api_settings()
    return FirestoreEndpointStore(firestore_client(settings.project, settings.database))


@lru_cache(maxsize=1)
def _delivery_queue() -> DeliveryQueue:
    if _substitute is not None:
        return _substitute.deliveries
    settings = api_settings()
    return PubSubDeliveryQueue(publisher_client(), project=settings.project, topic=settings.webhook_topic)


def _resolver() -> Resolver:
    if _substitute is not None:
        return _substitute.resolve
    return system_resolver if api_settings().webhook_resolve_names else no_names


@lru_cache(maxsize=1)
def _sender() -> Sender:
    if _substitute is not None:
        return _substitute.sender
    from jobs.adapters.webhook_sender import HttpSender  # httpx: only the webhooks function ships it

    return HttpSender(resolve=_resolver(), allow_loopback=api_settings().webhook_allow_loopback)


@lru_cache(maxsize=1)
def announcer() -> Announcer | None:
    """None where webhooks are off (no deliveries topic)."""
    if not api_settings().webhook_topic and _substitute is None:
        return None
    return Announcer(endpoints=endpoint_store(), queue=_delivery_queue(), clock=utcnow)


@lru_cache(maxsize=1)
def endpoint_service() -> EndpointService:
    return EndpointService(store=endpoint_store(), resolve=_resolver(),
                           allow_loopback=api_settings().webhook_allow_loopback, clock=utcnow)


@lru_cache(maxsize=1)
def deliverer() -> Deliverer:
    return Deliverer(endpoints=endpoint_store(), jobs=job_store(), batches=batch_store(), sender=_sender(),
                     clock=utcnow)


@lru_cache(maxsize=1)
def publisher() -> Publisher:
    traced()
    if _substitute is not None:
        return _substitute.publisher
    settings = api_settings()
    return PubSubPublisher(publisher_client(), project=settings.project, topics=settings.topics,
                           batch_topics=settings.batch_priority_topics, timeout=settings.publish_timeout_seconds)


def traced() -> None:
    """Install this function's tracer provider (once; jobs/tracing.py): before its first span."""
    settings = api_settings()
    tracing.configure_tracing(settings.service_name, exporter=settings.trace_exporter, directory=settings.trace_dir,
                              project=settings.project)


@lru_cache(maxsize=1)
def _api_keys() -> ApiKeyStore:
    if _substitute is not None:
        return _substitute.api_keys
    settings = api_settings()
    return FirestoreApiKeyStore(firestore_client(settings.project, settings.database))


@lru_cache(maxsize=1)
def _batch_inputs() -> BatchInputs:
    if _substitute is not None:
        return _substitute.batch_inputs
    return BucketInputs(BatchFiles(storage_client(api_settings().project)))


@lru_cache(maxsize=1)
def _batch_launcher() -> BatchLauncher:
    if _substitute is not None:
        return _substitute.batch_launcher
    settings = api_settings()
    if settings.batch_launcher == "local":
        return LocalBatchLauncher(log_dir=settings.batch_log_dir, max_running=settings.batch_local_max_running)
    return CloudRunBatchLauncher(project=settings.project, region=settings.region, job=settings.batch_job)


@lru_cache(maxsize=1)
def job_service() -> JobService:
    settings = api_settings()
    return JobService(
        store=job_store(), publisher=publisher(), catalog=settings.catalog,
        quota=Quota(submissions_per_minute=settings.quota_submissions_per_minute,
                    queued_jobs=settings.quota_queued_jobs),
        max_prompt_chars_per_token=settings.max_prompt_chars_per_token, announcer=announcer(),
    )


@lru_cache(maxsize=1)
def batch_service() -> BatchService:
    traced()
    settings = api_settings()
    return BatchService(store=batch_store(), inputs=_batch_inputs(), launcher=_batch_launcher(), files=file_service(),
                        bucket=settings.batch_bucket, ttl_seconds=settings.batch_ttl_seconds,
                        nightly_tenants=settings.nightly_tenants)


@lru_cache(maxsize=1)
def file_service() -> FileService:
    settings = api_settings()
    return FileService(store=file_store(), contents=_file_contents(), bucket=settings.batch_bucket,
                       max_bytes=settings.max_upload_bytes, clock=utcnow)


@lru_cache(maxsize=1)
def authenticator() -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator(_api_keys())


@lru_cache(maxsize=1)
def token_verifier() -> IdTokenVerifier:
    settings = api_settings()
    return IdTokenVerifier(audiences=[settings.token_audience], service_accounts=set(settings.token_tenants),
                           certs_url=settings.token_certs_url)


@lru_cache(maxsize=1)
def admission() -> Admission:
    settings = api_settings()
    return Admission(slots=settings.admission_slots, max_wait_seconds=settings.admission_max_wait_seconds)
