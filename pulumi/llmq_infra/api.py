"""The public HTTP API: the submit, status, completions and files functions, each with its own identity.

submit also starts on-demand batches (POST /v1/batches): it stores inline input under the batch
bucket's `inbox-ondemand/` and runs the batch Cloud Run job with per-batch arguments. The job is
named by a plain string (the stack's deterministic name), so this component does not depend on the
batch component; the batch component grants submit's identity the right to run that one job."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi_gcp as gcp

import pulumi
from jobs.constants import (
    AUTH_MODES,
    FILES_PREFIX,
    MAX_WAIT_SECONDS,
    ONDEMAND_PREFIX,
    QUOTA_QUEUED_JOBS,
    QUOTA_SUBMISSIONS_PER_MINUTE,
)
from llmq_infra.common import PUBLIC_MEMBERS, child_options, firestore_condition
from llmq_infra.function import HttpFunction, HttpFunctionArgs

# Requests one function instance takes at once (gunicorn threads). Submit: its admission works on 32 at a
# time and queues the rest for up to 30 s (jobs/adapters/admission.py); one local instance held 200
# concurrent clients without an error (BENCHMARKS.md, "Submit under load"; at 500 the local emulator was the
# limit), and Cloud Run adds instances from about 60 % of this, so 250 keeps each instance's queue short. Status: a `?wait` holds its request
# (a listener, no CPU) for up to 60 s, so the same bound, for as many waiting clients.
SUBMIT_CONCURRENCY = 250
STATUS_CONCURRENCY = 250
# Completions (OpenAI's chat and completions): each request mostly waits on a listener for its job, up to the
# completion timeout; the function's own timeout is Cloud Run's longest, and the wait ends a minute before it so
# that the 504 (and the cancel) is the function's answer, not the platform's.
COMPLETIONS_CONCURRENCY = 500
COMPLETIONS_TIMEOUT_SECONDS = 3600
COMPLETION_WAIT_SECONDS = COMPLETIONS_TIMEOUT_SECONDS - 60
# Files (OpenAI's Files API): an upload of up to 32 MiB streams through to Cloud Storage, and a batch's output
# file streams back; both may take minutes on a slow client, and each holds a chunk (1 MiB) in memory.
FILES_CONCURRENCY = 80
FILES_TIMEOUT_SECONDS = 900


def bucket_prefix_condition(bucket: pulumi.Input[str], prefix: str) -> gcp.storage.BucketIAMMemberConditionArgs:
    """Limits a bucket role to the objects under `prefix` (IAM Conditions on object names; the bucket
    has uniform bucket-level access). Bucket-level calls such as objects.list do not match it."""
    return gcp.storage.BucketIAMMemberConditionArgs(
        title=f"only-{prefix.strip('/')}",
        description=f"objects under {prefix} only",
        expression=pulumi.Output.concat('resource.name.startsWith("projects/_/buckets/', bucket,
                                        f'/objects/{prefix}")'),
    )


@dataclass
class ApiArgs:
    project: str
    region: str
    database: str
    submit_name: str
    status_name: str
    submit_account_id: str
    status_account_id: str
    completions_name: str
    completions_account_id: str
    files_name: str
    files_account_id: str
    jobs_topic: pulumi.Input[str]
    batch_jobs_topic: pulumi.Input[str]  # `priority: "batch"` jobs
    models_json: str  # LLMQ_MODELS
    sources_bucket: pulumi.Input[str]
    build_service_account: pulumi.Input[str]
    docker_repository: pulumi.Input[str]
    max_instances: int
    # On-demand batches (docs/BATCH.md): the bucket, and the batch Cloud Run job's name in `region`
    # (a string: the job itself is created by the batch component, after this one, or not yet).
    batch_bucket: pulumi.Input[str]
    batch_job: str
    # How the functions authenticate callers (jobs/adapters/caller.py) and the per-tenant quotas.
    auth_mode: str = "api_key"
    # api_key mode: service accounts that may call with a Google ID token instead of a key (the nightly
    # workflow's), and their tenants. Cloud Run IAM checks those tokens where the API is not public; where it
    # is, the functions do, for token_audience (exported as `token_audience`, for the callers).
    token_tenants: dict[str, str] = field(default_factory=dict)
    token_audience: str = ""
    model_aliases: dict[str, str] = field(default_factory=dict)  # LLMQ_MODEL_ALIASES
    # The tenants that may ask for batches of inbox/ objects: the nightly workflow's.
    nightly_tenants: Sequence[str] = ()
    quota_submissions_per_minute: int = QUOTA_SUBMISSIONS_PER_MINUTE
    quota_queued_jobs: int = QUOTA_QUEUED_JOBS
    # Who may call the API through IAM. The functions authenticate callers themselves (CONTRACT
    # §1); "allUsers" makes the endpoints public, an empty list leaves them to project principals
    # with identity tokens.
    invokers: Sequence[str] = ()
    webhook_topic: str = ""  # LLMQ_WEBHOOK_TOPIC: a cancel ends a job, and announces it
    labels: dict[str, str] = field(default_factory=dict)


class Api(pulumi.ComponentResource):
    token_audience: str
    submit: HttpFunction
    status: HttpFunction
    completions: HttpFunction
    files: HttpFunction
    submit_member: pulumi.Output[str]  # serviceAccount:<submit identity>, for the batch job's launcher grant
    submit_url: pulumi.Output[str]
    status_url: pulumi.Output[str]
    completions_url: pulumi.Output[str]
    files_url: pulumi.Output[str]

    def __init__(self, name: str, args: ApiArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if len({args.submit_name, args.status_name, args.completions_name, args.files_name}) < 4:
            raise ValueError("Api: submit, status, completions and files need distinct names")
        if args.max_instances < 1:
            raise ValueError("Api: max_instances must be at least 1")
        if args.auth_mode not in AUTH_MODES:
            raise ValueError(f"Api: auth_mode must be one of {AUTH_MODES}")
        if args.auth_mode == "iam" and any(m in PUBLIC_MEMBERS for m in args.invokers):
            # In iam mode the functions trust the token's claims because IAM verified it: a public
            # endpoint is not verified at all.
            raise ValueError("Api: auth_mode 'iam' needs IAM at the door; invokers must not be public")
        if args.token_tenants and (args.auth_mode != "api_key" or not args.token_audience):
            raise ValueError("Api: token_tenants are for api_key mode and need token_audience")
        if not args.batch_job:
            raise ValueError("Api: batch_job must name the batch Cloud Run job")
        super().__init__("llmq:infra:Api", name, None, opts)
        env: dict[str, pulumi.Input[str]] = {
            "LLMQ_PROJECT": args.project,
            "LLMQ_DATABASE": args.database,
            "LLMQ_TOPICS": pulumi.Output.json_dumps([args.jobs_topic]),
            "LLMQ_MODELS": args.models_json,
            "LLMQ_MODEL_ALIASES": json.dumps(args.model_aliases),
            "LLMQ_AUTH_MODE": args.auth_mode,
            "LLMQ_WEBHOOK_TOPIC": args.webhook_topic,
        }
        public = any(m in PUBLIC_MEMBERS for m in args.invokers)
        # The audience the token callers must use: "" for the functions' URLs (what IAM checks).
        self.token_audience = args.token_audience if args.token_tenants and public else ""
        if args.token_tenants:
            env["LLMQ_TOKEN_TENANTS"] = json.dumps(args.token_tenants)
            env["LLMQ_TOKEN_CHECKED_BY"] = "function" if public else "cloud_run"
            if public:
                env["LLMQ_TOKEN_AUDIENCE"] = args.token_audience
        # Only submit creates jobs and batches: the quotas, the batch bucket and the job it launches.
        submit_env: dict[str, pulumi.Input[str]] = {
            **env,
            "LLMQ_BATCH_PRIORITY_TOPICS": pulumi.Output.json_dumps([args.batch_jobs_topic]),
            "LLMQ_QUOTA_SUBMISSIONS_PER_MINUTE": str(args.quota_submissions_per_minute),
            "LLMQ_QUOTA_QUEUED_JOBS": str(args.quota_queued_jobs),
            "LLMQ_BATCH_BUCKET": args.batch_bucket,
            "LLMQ_BATCH_LAUNCHER": "cloudrun",
            "LLMQ_REGION": args.region,
            "LLMQ_BATCH_JOB": args.batch_job,
            "LLMQ_NIGHTLY_TENANTS": json.dumps(list(args.nightly_tenants)),
        }
        common: dict[str, Any] = {
            "project": args.project, "region": args.region, "sources_bucket": args.sources_bucket,
            "build_service_account": args.build_service_account, "docker_repository": args.docker_repository,
            "labels": args.labels,
        }
        child = child_options(self, opts)
        # The two functions that submit jobs start each job's trace (jobs/tracing.py) and export it to Cloud Trace.
        submit_env["LLMQ_TRACE_EXPORTER"] = "gcp"
        self.submit = HttpFunction(f"{name}-submit", HttpFunctionArgs(
            function_name=args.submit_name, source="submit", entry_point="submit",
            account_id=args.submit_account_id, env=submit_env,
            max_instances=args.max_instances, concurrency=SUBMIT_CONCURRENCY, timeout_seconds=60,
            description="llmq: POST /v1/jobs, /v1/batches, cancel", **common), opts=child)
        self.status = HttpFunction(f"{name}-status", HttpFunctionArgs(
            function_name=args.status_name, source="status", entry_point="status",
            account_id=args.status_account_id, env={**env, "LLMQ_MAX_WAIT_SECONDS": str(MAX_WAIT_SECONDS)},
            # A `wait` holds its request up to 60 s: the timeout leaves room to answer after it.
            max_instances=args.max_instances, concurrency=STATUS_CONCURRENCY, timeout_seconds=MAX_WAIT_SECONDS + 30,
            description="llmq: GET /v1/jobs/{id}, /v1/batches/{id}, /v1/models", **common), opts=child)
        # Completions submits interactive jobs (the submit function's quotas) and waits for them.
        completions_env: dict[str, pulumi.Input[str]] = {
            **env,
            "LLMQ_QUOTA_SUBMISSIONS_PER_MINUTE": str(args.quota_submissions_per_minute),
            "LLMQ_QUOTA_QUEUED_JOBS": str(args.quota_queued_jobs),
            "LLMQ_COMPLETION_TIMEOUT_SECONDS": str(COMPLETION_WAIT_SECONDS),
            "LLMQ_TRACE_EXPORTER": "gcp",
        }
        self.completions = HttpFunction(f"{name}-completions", HttpFunctionArgs(
            function_name=args.completions_name, source="completions", entry_point="completions",
            account_id=args.completions_account_id, env=completions_env, max_instances=args.max_instances,
            concurrency=COMPLETIONS_CONCURRENCY, timeout_seconds=COMPLETIONS_TIMEOUT_SECONDS, memory="1Gi",
            description="llmq: POST /v1/chat/completions, /v1/completions", **common), opts=child)
        self.files = HttpFunction(f"{name}-files", HttpFunctionArgs(
            function_name=args.files_name, source="files", entry_point="files",
            account_id=args.files_account_id, env={**env, "LLMQ_BATCH_BUCKET": args.batch_bucket},
            max_instances=args.max_instances, concurrency=FILES_CONCURRENCY, timeout_seconds=FILES_TIMEOUT_SECONDS,
            memory="512Mi", description="llmq: /v1/files (OpenAI's Files API)", **common), opts=child)

        # submit creates and cancels jobs and batches, publishes jobs, and stores inline batch input;
        # status only reads Firestore (jobs, batches, api_keys).
        gcp.projects.IAMMember(f"{name}-submit-firestore", project=args.project, role="roles/datastore.user",
                               member=self.submit.service_account.member,
                               condition=firestore_condition(args.project, args.database), opts=child)
        gcp.pubsub.TopicIAMMember(f"{name}-submit-publisher", project=args.project, topic=args.jobs_topic,
                                  role="roles/pubsub.publisher", member=self.submit.service_account.member, opts=child)
        gcp.pubsub.TopicIAMMember(f"{name}-submit-batch-publisher", project=args.project, topic=args.batch_jobs_topic,
                                  role="roles/pubsub.publisher", member=self.submit.service_account.member, opts=child)
        # POST /v1/batches with `input_uri` checks that the object exists (objects.get anywhere in the
        # batch bucket); with `input_jsonl` it writes inbox-ondemand/<id>.jsonl, and deletes it again if
        # the launch fails. Writing is limited to that prefix: submit cannot add files to inbox/ (the
        # nightly run's) or outbox/ (results). Running the batch job is granted on the job (batch.py).
        gcp.storage.BucketIAMMember(f"{name}-submit-batch-reader", bucket=args.batch_bucket,
                                    role="roles/storage.objectViewer", member=self.submit.service_account.member,
                                    opts=child)
        gcp.storage.BucketIAMMember(f"{name}-submit-batch-ondemand", bucket=args.batch_bucket,
                                    role="roles/storage.objectUser", member=self.submit.service_account.member,
                                    condition=bucket_prefix_condition(args.batch_bucket, ONDEMAND_PREFIX), opts=child)
        # completions creates and cancels interactive jobs, publishes them, and reads their documents.
        gcp.projects.IAMMember(f"{name}-completions-firestore", project=args.project, role="roles/datastore.user",
                               member=self.completions.service_account.member,
                               condition=firestore_condition(args.project, args.database), opts=child)
        gcp.pubsub.TopicIAMMember(f"{name}-completions-publisher", project=args.project, topic=args.jobs_topic,
                                  role="roles/pubsub.publisher", member=self.completions.service_account.member,
                                  opts=child)
        # files keeps `files/{id}` records, writes and deletes uploads under files/ only, and reads any object of
        # the batch bucket its records name (uploads, and batches' outputs under outbox/).
        gcp.projects.IAMMember(f"{name}-files-firestore", project=args.project, role="roles/datastore.user",
                               member=self.files.service_account.member,
                               condition=firestore_condition(args.project, args.database), opts=child)
        gcp.storage.BucketIAMMember(f"{name}-files-batch-reader", bucket=args.batch_bucket,
                                    role="roles/storage.objectViewer", member=self.files.service_account.member,
                                    opts=child)
        gcp.storage.BucketIAMMember(f"{name}-files-uploads", bucket=args.batch_bucket,
                                    role="roles/storage.objectUser", member=self.files.service_account.member,
                                    condition=bucket_prefix_condition(args.batch_bucket, FILES_PREFIX), opts=child)
        for role_name, function in (("submit", self.submit), ("completions", self.completions)):
            gcp.projects.IAMMember(f"{name}-{role_name}-trace", project=args.project, role="roles/cloudtrace.agent",
                                   member=function.service_account.member, opts=child)
        gcp.projects.IAMMember(f"{name}-status-firestore", project=args.project, role="roles/datastore.viewer",
                               member=self.status.service_account.member,
                               condition=firestore_condition(args.project, args.database), opts=child)
        for role_name, function in (("submit", self.submit), ("status", self.status),
                                    ("completions", self.completions), ("files", self.files)):
            for i, member in enumerate(args.invokers):
                gcp.cloudrunv2.ServiceIamMember(
                    f"{name}-{role_name}-invoker-{i}", project=args.project, location=args.region,
                    name=function.service_name, role="roles/run.invoker", member=member, opts=child)

        self.submit_member = self.submit.service_account.member
        self.submit_url = self.submit.url
        self.status_url = self.status.url
        self.completions_url = self.completions.url
        self.files_url = self.files.url
        self.register_outputs({"submit_url": self.submit_url, "status_url": self.status_url,
                               "completions_url": self.completions_url, "files_url": self.files_url})
