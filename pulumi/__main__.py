"""llmq on Google Cloud: `pulumi up` deploys the whole platform; every compute part scales to zero.

This file only composes the components (pulumi/llmq_infra/, one per module) from the settings
(llmq_infra/config.py, the one place that reads the stack config) and exports what clients need."""

from __future__ import annotations

import json

from llmq_infra.api import FILES_TIMEOUT_SECONDS, Api, ApiArgs
from llmq_infra.apis import Apis, ApisArgs
from llmq_infra.batch import NightlyBatch, NightlyBatchArgs, workflow_definition
from llmq_infra.builder import FunctionBuilder, FunctionBuilderArgs
from llmq_infra.common import PUBLIC_MEMBERS
from llmq_infra.config import load
from llmq_infra.gateway import Gateway, GatewayArgs
from llmq_infra.maintenance import Maintenance, MaintenanceArgs
from llmq_infra.observability import Observability, ObservabilityArgs
from llmq_infra.queue import PushTarget, Queue, QueueArgs
from llmq_infra.registry import Registry, RegistryArgs
from llmq_infra.runner import Runner, RunnerArgs
from llmq_infra.store import Store, StoreArgs
from llmq_infra.topics import Topics, TopicsArgs
from llmq_infra.webhooks import Webhooks, WebhooksArgs

import pulumi  # after llmq_infra: ruff files `pulumi` as first-party (the pulumi/ folder)
from jobs.constants import DEAD_LETTER_TOPIC_SUFFIX, JOBS_TOPIC, MAX_WAIT_SECONDS, WEBHOOK_TOPIC

s = load()
project, region, labels = s.project, s.region, s.labels

apis = Apis("apis", ApisArgs(project=project))
after_apis = pulumi.ResourceOptions(depends_on=[apis])

registry = Registry("registry", RegistryArgs(project=project, region=region, repository_id=s.repository,
                                             labels=labels), opts=after_apis)
store = Store("store", StoreArgs(
    project=project, region=region, firestore_location=s.firestore_location, database=s.database,
    create_database=s.create_database,
    results_bucket=f"{project}-{s.prefix}-results", batch_bucket=f"{project}-{s.prefix}-batch",
    models_bucket=f"{project}-{s.prefix}-models", sources_bucket=f"{project}-{s.prefix}-sources",
    results_retention_days=s.results_retention_days, batch_retention_days=s.batch_retention_days,
    force_destroy=s.force_destroy_buckets, labels=labels), opts=after_apis)
topics = Topics("topics", TopicsArgs(project=project, jobs_topic=s.name(JOBS_TOPIC),
                                     dead_letter_topic=s.name(JOBS_TOPIC + DEAD_LETTER_TOPIC_SUFFIX),
                                     labels=labels), opts=after_apis)

builder = FunctionBuilder("function-builder", FunctionBuilderArgs(
    project=project, account_id=s.account_id("build"), repository=registry.repository.repository_id,
    region=region), opts=after_apis)
# Functions build as the builder identity: its roles must exist before the first build.
after_builder = pulumi.ResourceOptions(depends_on=[apis, builder])
function_build = {"sources_bucket": store.sources_bucket.name, "build_service_account": builder.service_account_id,
                  "docker_repository": registry.repository_path}
models_json = json.dumps([m.catalog_entry() for m in s.models])
# The batch job's name is fixed by the config: submit is told it as a string (no dependency on the
# batch component, which exists only once the image is built); the batch component grants submit's
# identity the right to run it.
batch_job_name = s.name("batch")
# Webhook deliveries (CONTRACT §9): a fixed name, told to every deployable that ends jobs before the topic exists.
webhook_topic = s.name(WEBHOOK_TOPIC)
# The nightly workflow calls the API with ID tokens (jobs/adapters/caller.py): in api_key mode its service
# account (whose email is known before the account exists) acts as the tenant "nightly"; in iam mode its email
# is its tenant. That tenant alone may ask for batches of inbox/ objects.
workflow_email = f"{s.account_id('workflow')}@{project}.iam.gserviceaccount.com"
nightly_token_tenants = {workflow_email: "nightly"} if s.image_built and s.api_auth_mode == "api_key" else {}
nightly_tenants = ([] if not s.image_built else ["nightly"] if s.api_auth_mode == "api_key" else [workflow_email])

api = Api("api", ApiArgs(
    project=project, region=region, database=s.database,
    submit_name=s.name("submit"), status_name=s.name("status"),
    submit_account_id=s.account_id("submit"), status_account_id=s.account_id("status"),
    completions_name=s.name("completions"), completions_account_id=s.account_id("completions"),
    files_name=s.name("files"), files_account_id=s.account_id("files"),
    jobs_topic=topics.jobs.name, batch_jobs_topic=topics.batch_jobs.name,
    models_json=models_json, model_aliases=s.model_aliases, max_instances=s.api_max_instances,
    batch_bucket=store.batch_bucket.name, batch_job=batch_job_name, auth_mode=s.api_auth_mode,
    token_tenants=nightly_token_tenants, token_audience=s.name("api"), nightly_tenants=nightly_tenants,
    quota_submissions_per_minute=s.quota_submissions_per_minute, quota_queued_jobs=s.quota_queued_jobs,
    invokers=s.api_invokers, webhook_topic=webhook_topic, labels=labels, **function_build), opts=after_builder)
maintenance = Maintenance("maintenance", MaintenanceArgs(
    project=project, region=region, database=s.database,
    deadletter_name=s.name("deadletter"), reconcile_name=s.name("reconcile"),
    deadletter_account_id=s.account_id("deadletter"), reconcile_account_id=s.account_id("reconcile"),
    scheduler_account_id=s.account_id("sched-rec"), jobs_topic=topics.jobs.name,
    batch_jobs_topic=topics.batch_jobs.name, models_json=models_json,
    reconcile_schedule=s.reconcile_schedule, reconcile_queued_seconds=s.reconcile_queued_seconds,
    reconcile_lease_lapsed_seconds=s.reconcile_lease_lapsed_seconds, internal_ingress=s.internal_ingress,
    webhook_topic=webhook_topic, labels=labels, **function_build), opts=after_builder)

if not s.image_built:
    # Bootstrap: the repository is created by this run; the GPU parts follow once the image is in it.
    pulumi.log.warn("llmq:image is not set: deploying everything except the GPU runner and the batch job. "
                    "Build the image (cloudbuild.yaml, docs/DEPLOY.md), then `pulumi config set llmq:image "
                    f"{s.suggested_image()}` and `pulumi up` again.")

# One runner service per model (DESIGN_NOTES: several models = several runners, filtered pushes).
runners = [
    Runner(f"runner-{m.key}", RunnerArgs(
        project=project, region=region, database=s.database,
        service_name=s.name(f"runner-{m.key}"), account_id=s.account_id(f"run-{m.key}"), image=s.image,
        model_id=m.id, model_path=m.path, max_model_len=m.max_model_len,
        models_bucket=store.models_bucket.name, results_bucket=store.results_bucket.name,
        cpu=s.runner_cpu, memory_gib=s.runner_memory_gib, max_instances=s.runner_max_instances,
        max_concurrency=s.max_concurrency, max_inflight=s.max_inflight, lease_seconds=s.lease_seconds,
        generation_timeout_seconds=s.generation_timeout_seconds, request_timeout_seconds=s.runner_timeout_seconds,
        startup_timeout_seconds=s.startup_timeout_seconds, gpu_zonal_redundancy=s.gpu_zonal_redundancy,
        internal_ingress=s.internal_ingress, webhook_topic=webhook_topic, labels=labels), opts=after_apis)
    for m in s.models
    if s.image_built
]

queue = Queue("queue", QueueArgs(
    project=project, region=region, jobs_topic=topics.jobs.name, batch_jobs_topic=topics.batch_jobs.name,
    dead_letter_topic=topics.dead_letter.name,
    dead_letter_topic_id=topics.dead_letter.id, pubsub_agent_member=topics.pubsub_agent_member,
    runners=[PushTarget(model_id=r.model_id, subscription_name=s.name(f"jobs-{m.key}"), url=r.url,
                        service_name=r.service_name) for r, m in zip(runners, s.models)],
    push_account_id=s.account_id("push"), dead_letter_push_account_id=s.account_id("dl-push"),
    deadletter_url=maintenance.deadletter_url, deadletter_service_name=maintenance.deadletter.service_name,
    dead_letter_subscription=s.name("jobs-dead-letter-push"),
    inspection_subscription=s.name("jobs-dead-letter-inspect"),
    ack_deadline_seconds=s.ack_deadline_seconds, max_delivery_attempts=s.max_delivery_attempts,
    min_backoff_seconds=s.min_backoff_seconds, max_backoff_seconds=s.max_backoff_seconds, labels=labels),
    opts=after_apis)

batch: NightlyBatch | None = None
if s.image_built:
    workflow_source = workflow_definition()
    default_model = s.default_model
    batch = NightlyBatch("batch", NightlyBatchArgs(
        project=project, region=region, database=s.database,
        job_name=batch_job_name, workflow_name=s.name("nightly-batch"), scheduler_name=s.name("nightly-batch"),
        job_account_id=s.account_id("batch"), workflow_account_id=s.account_id("workflow"),
        scheduler_account_id=s.account_id("sched-batch"), image=s.image,
        model_id=default_model.id, model_aliases=s.model_aliases, model_path=default_model.path, max_model_len=default_model.max_model_len,
        max_concurrency=s.max_concurrency, models_bucket=store.models_bucket.name,
        batch_bucket=store.batch_bucket.name, cpu=s.runner_cpu, memory_gib=s.runner_memory_gib,
        task_timeout_seconds=s.batch_task_timeout_seconds, max_retries=s.batch_max_retries,
        schedule=s.batch_schedule, time_zone=s.batch_time_zone, workflow_source=workflow_source,
        gpu_zonal_redundancy=s.gpu_zonal_redundancy, launcher_members=[api.submit_member],
        submit_url=api.submit_url, status_url=api.status_url,
        api_audience=api.token_audience,
        api_services=[api.submit.service_name, api.status.service_name], webhook_topic=webhook_topic,
        labels=labels), opts=after_apis)

# Webhooks (CONTRACT §9): every identity that ends a job or batch announces it on the deliveries topic.
webhooks = Webhooks("webhooks", WebhooksArgs(
    project=project, region=region, database=s.database, function_name=s.name("webhooks"),
    account_id=s.account_id("webhooks"), push_account_id=s.account_id("wh-push"), topic=webhook_topic,
    dead_letter_topic=webhook_topic + DEAD_LETTER_TOPIC_SUFFIX, pubsub_agent_member=topics.pubsub_agent_member,
    publishers=[("submit", api.submit.service_account.member),
                ("completions", api.completions.service_account.member),
                ("deadletter", maintenance.deadletter.service_account.member),
                ("reconcile", maintenance.reconcile.service_account.member),
                *((f"runner-{m.key}", r.service_account.member) for r, m in zip(runners, s.models)),
                *([("batch", batch.job_service_account.member)] if batch is not None else [])],
    internal_ingress=s.internal_ingress, labels=labels, **function_build), opts=after_apis)

# One base URL for every route (CONTRACT §8), where the functions take the caller's credentials themselves.
gateway: Gateway | None = None
if s.api_auth_mode == "api_key" and any(m in PUBLIC_MEMBERS for m in s.api_invokers):
    gateway = Gateway("gateway", GatewayArgs(
        project=project, region=region, api_id=s.name("api"),
        addresses={"submit": api.submit_url, "status": api.status_url, "completions": api.completions_url,
                   "files": api.files_url},
        # completions: API Gateway's longest deadline, the function's own timeout.
        deadlines={"submit": 70.0, "status": float(MAX_WAIT_SECONDS + 40), "completions": 3600.0,
                   "files": float(FILES_TIMEOUT_SECONDS)}, labels=labels),
    opts=after_apis)
else:
    pulumi.log.info("no API gateway: in iam mode, or with private functions, call each function's URL")

observability = Observability("observability", ObservabilityArgs(
    project=project, dashboard_name=f"llmq ({s.prefix})",
    runner_services=[r.service_name for r in runners],
    jobs_subscriptions=[sub.name for sub in queue.subscriptions.values()],
    inspection_subscription=queue.inspection_subscription.name,
    oldest_unacked_alert_seconds=s.oldest_unacked_alert_seconds, runner_error_ratio=s.runner_error_ratio_alert,
    alert_emails=s.alert_emails, labels=labels), opts=after_apis)

if gateway is not None:
    pulumi.export("api_url", gateway.url)
pulumi.export("submit_url", api.submit_url)
pulumi.export("status_url", api.status_url)
pulumi.export("completions_url", api.completions_url)
pulumi.export("files_url", api.files_url)
if runners:
    pulumi.export("runner_url", runners[0].url)
    pulumi.export("runner_urls", {r.model_id: r.url for r in runners})
pulumi.export("results_bucket", store.results_bucket.name)
pulumi.export("batch_bucket", store.batch_bucket.name)
pulumi.export("models_bucket", store.models_bucket.name)
pulumi.export("jobs_topic", topics.jobs.name)
pulumi.export("batch_jobs_topic", topics.batch_jobs.name)
pulumi.export("dead_letter_topic", topics.dead_letter.name)
pulumi.export("dead_letter_inspection_subscription", queue.inspection_subscription.name)
pulumi.export("database", store.database_name)
pulumi.export("image", s.image or "(not built yet)")
pulumi.export("image_repository", registry.image_prefix)
if batch is not None:
    pulumi.export("nightly_workflow", batch.workflow.name)
