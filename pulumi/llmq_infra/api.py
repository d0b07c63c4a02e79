"""The public HTTP API: the submit and status functions, each with its own identity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi_gcp as gcp

import pulumi
from llmq_infra.common import child_options, firestore_condition
from llmq_infra.function import HttpFunction, HttpFunctionArgs

MAX_WAIT_SECONDS = 60  # GET /v1/jobs/{id}?wait=N bound (CONTRACT §1)


@dataclass
class ApiArgs:
    project: str
    region: str
    database: str
    submit_name: str
    status_name: str
    submit_account_id: str
    status_account_id: str
    jobs_topic: pulumi.Input[str]
    models_json: str  # LLMQ_MODELS
    sources_bucket: pulumi.Input[str]
    build_service_account: pulumi.Input[str]
    docker_repository: pulumi.Input[str]
    max_instances: int
    # Who may call the API through IAM. The functions authenticate callers themselves (CONTRACT
    # §1); "allUsers" makes the endpoints public, an empty list leaves them to project principals
    # with identity tokens.
    invokers: Sequence[str] = ()
    labels: dict[str, str] = field(default_factory=dict)


class Api(pulumi.ComponentResource):
    submit: HttpFunction
    status: HttpFunction
    submit_url: pulumi.Output[str]
    status_url: pulumi.Output[str]

    def __init__(self, name: str, args: ApiArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.submit_name == args.status_name:
            raise ValueError("Api: submit and status need distinct names")
        if args.max_instances < 1:
            raise ValueError("Api: max_instances must be at least 1")
        super().__init__("llmq:infra:Api", name, None, opts)
        env: dict[str, pulumi.Input[str]] = {
            "LLMQ_PROJECT": args.project,
            "LLMQ_DATABASE": args.database,
            "LLMQ_TOPICS": pulumi.Output.json_dumps([args.jobs_topic]),
            "LLMQ_MODELS": args.models_json,
        }
        common: dict[str, Any] = {
            "project": args.project, "region": args.region, "sources_bucket": args.sources_bucket,
            "build_service_account": args.build_service_account, "docker_repository": args.docker_repository,
            "labels": args.labels,
        }
        child = child_options(self, opts)
        self.submit = HttpFunction(f"{name}-submit", HttpFunctionArgs(
            function_name=args.submit_name, source="submit", entry_point="submit",
            account_id=args.submit_account_id, env=env,
            max_instances=args.max_instances, concurrency=80, timeout_seconds=60,
            description="llmq: POST /v1/jobs, cancel", **common), opts=child)
        self.status = HttpFunction(f"{name}-status", HttpFunctionArgs(
            function_name=args.status_name, source="status", entry_point="status",
            account_id=args.status_account_id, env={**env, "LLMQ_MAX_WAIT_SECONDS": str(MAX_WAIT_SECONDS)},
            # A `wait` holds its request up to 60 s: the timeout leaves room to answer after it.
            max_instances=args.max_instances, concurrency=80, timeout_seconds=MAX_WAIT_SECONDS + 30,
            description="llmq: GET /v1/jobs/{id}, /v1/models", **common), opts=child)

        # submit creates and cancels jobs and publishes them; status only reads.
        gcp.projects.IAMMember(f"{name}-submit-firestore", project=args.project, role="roles/datastore.user",
                               member=self.submit.service_account.member,
                               condition=firestore_condition(args.project, args.database), opts=child)
        gcp.pubsub.TopicIAMMember(f"{name}-submit-publisher", project=args.project, topic=args.jobs_topic,
                                  role="roles/pubsub.publisher", member=self.submit.service_account.member, opts=child)
        gcp.projects.IAMMember(f"{name}-status-firestore", project=args.project, role="roles/datastore.viewer",
                               member=self.status.service_account.member,
                               condition=firestore_condition(args.project, args.database), opts=child)
        for role_name, function in (("submit", self.submit), ("status", self.status)):
            for i, member in enumerate(args.invokers):
                gcp.cloudrunv2.ServiceIamMember(
                    f"{name}-{role_name}-invoker-{i}", project=args.project, location=args.region,
                    name=function.service_name, role="roles/run.invoker", member=member, opts=child)

        self.submit_url = self.submit.url
        self.status_url = self.status.url
        self.register_outputs({"submit_url": self.submit_url, "status_url": self.status_url})
