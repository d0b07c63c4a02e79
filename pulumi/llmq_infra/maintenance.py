"""The CPU-side housekeeping: the dead-letter handler (a dead letter must never cold-start a GPU)
and the reconciler with the Cloud Scheduler tick that calls it."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pulumi_gcp as gcp

import pulumi
from llmq_infra.common import child_options, duration, firestore_condition
from llmq_infra.function import HttpFunction, HttpFunctionArgs

RECONCILE_TIMEOUT_SECONDS = 240


@dataclass
class MaintenanceArgs:
    project: str
    region: str
    database: str
    deadletter_name: str
    reconcile_name: str
    deadletter_account_id: str
    reconcile_account_id: str
    scheduler_account_id: str
    jobs_topic: pulumi.Input[str]
    batch_jobs_topic: pulumi.Input[str]
    models_json: str
    sources_bucket: pulumi.Input[str]
    build_service_account: pulumi.Input[str]
    docker_repository: pulumi.Input[str]
    reconcile_schedule: str
    reconcile_queued_seconds: int
    reconcile_lease_lapsed_seconds: int
    internal_ingress: bool = True  # reachable only from Pub/Sub, Scheduler and the VPC of this project
    webhook_topic: str = ""  # LLMQ_WEBHOOK_TOPIC: dead letters and the reconciler end jobs, and announce them
    labels: dict[str, str] = field(default_factory=dict)


class Maintenance(pulumi.ComponentResource):
    deadletter: HttpFunction
    reconcile: HttpFunction
    scheduler_job: gcp.cloudscheduler.Job
    deadletter_url: pulumi.Output[str]

    def __init__(self, name: str, args: MaintenanceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if len(args.reconcile_schedule.split()) != 5:
            raise ValueError("Maintenance: reconcile_schedule must be a cron expression")
        if args.reconcile_queued_seconds < 60 or args.reconcile_lease_lapsed_seconds < 10:
            raise ValueError("Maintenance: reconcile thresholds are too small")
        super().__init__("llmq:infra:Maintenance", name, None, opts)
        child = child_options(self, opts)
        env: dict[str, pulumi.Input[str]] = {
            "LLMQ_PROJECT": args.project,
            "LLMQ_DATABASE": args.database,
            "LLMQ_TOPICS": pulumi.Output.json_dumps([args.jobs_topic]),
            "LLMQ_BATCH_PRIORITY_TOPICS": pulumi.Output.json_dumps([args.batch_jobs_topic]),
            "LLMQ_MODELS": args.models_json,
            "LLMQ_WEBHOOK_TOPIC": args.webhook_topic,
            # Both add spans to a job's trace (a dead letter's end, a re-publish): exported to Cloud Trace.
            "LLMQ_TRACE_EXPORTER": "gcp",
        }
        ingress = "ALLOW_INTERNAL_ONLY" if args.internal_ingress else "ALLOW_ALL"
        common: dict[str, Any] = {
            "project": args.project, "region": args.region, "sources_bucket": args.sources_bucket,
            "build_service_account": args.build_service_account, "docker_repository": args.docker_repository,
            "ingress": ingress, "labels": args.labels,
        }
        self.deadletter = HttpFunction(f"{name}-deadletter", HttpFunctionArgs(
            function_name=args.deadletter_name, source="deadletter", entry_point="deadletter",
            account_id=args.deadletter_account_id, env=env, max_instances=3, concurrency=20, timeout_seconds=60,
            description="llmq: marks dead-lettered jobs failed (push endpoint of the dead-letter topic)",
            **common), opts=child)
        self.reconcile = HttpFunction(f"{name}-reconcile", HttpFunctionArgs(
            function_name=args.reconcile_name, source="reconcile", entry_point="reconcile",
            account_id=args.reconcile_account_id,
            env={**env,
                 "LLMQ_RECONCILE_QUEUED_SECONDS": str(args.reconcile_queued_seconds),
                 "LLMQ_RECONCILE_LEASE_LAPSED_SECONDS": str(args.reconcile_lease_lapsed_seconds)},
            # One sweep at a time: two overlapping sweeps would republish the same jobs twice.
            max_instances=1, concurrency=1, timeout_seconds=RECONCILE_TIMEOUT_SECONDS,
            description="llmq: republishes lost jobs (called by Cloud Scheduler)", **common), opts=child)

        for role_name, function in (("deadletter", self.deadletter), ("reconcile", self.reconcile)):
            gcp.projects.IAMMember(f"{name}-{role_name}-firestore", project=args.project, role="roles/datastore.user",
                                   member=function.service_account.member,
                                   condition=firestore_condition(args.project, args.database), opts=child)
            gcp.projects.IAMMember(f"{name}-{role_name}-trace", project=args.project, role="roles/cloudtrace.agent",
                                   member=function.service_account.member, opts=child)
        for key, topic in (("", args.jobs_topic), ("batch-", args.batch_jobs_topic)):
            gcp.pubsub.TopicIAMMember(f"{name}-reconcile-{key}publisher", project=args.project, topic=topic,
                                      role="roles/pubsub.publisher", member=self.reconcile.service_account.member,
                                      opts=child)

        # The scheduler's identity may do one thing: invoke the reconciler.
        scheduler_sa = gcp.serviceaccount.Account(
            f"{name}-scheduler-sa", project=args.project, account_id=args.scheduler_account_id,
            display_name="llmq reconcile scheduler", opts=child)
        gcp.cloudrunv2.ServiceIamMember(
            f"{name}-scheduler-invoker", project=args.project, location=args.region,
            name=self.reconcile.service_name, role="roles/run.invoker", member=scheduler_sa.member, opts=child)
        self.scheduler_job = gcp.cloudscheduler.Job(
            f"{name}-reconcile-tick",
            project=args.project,
            region=args.region,
            name=f"{args.reconcile_name}-tick",
            description="POST the reconciler: republish jobs lost between the two writes or under a lapsed lease",
            schedule=args.reconcile_schedule,
            time_zone="Etc/UTC",
            attempt_deadline=duration(RECONCILE_TIMEOUT_SECONDS + 30),
            # The next tick is the retry.
            retry_config=gcp.cloudscheduler.JobRetryConfigArgs(retry_count=0),
            http_target=gcp.cloudscheduler.JobHttpTargetArgs(
                uri=self.reconcile.url,
                http_method="POST",
                headers={"Content-Type": "application/json"},
                body=base64.b64encode(json.dumps({}).encode()).decode(),
                oidc_token=gcp.cloudscheduler.JobHttpTargetOidcTokenArgs(
                    service_account_email=scheduler_sa.email, audience=self.reconcile.url),
            ),
            opts=child,
        )
        self.deadletter_url = self.deadletter.url
        self.register_outputs({"deadletter_url": self.deadletter_url, "reconcile_url": self.reconcile.url})
