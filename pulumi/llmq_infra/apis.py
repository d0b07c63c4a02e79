"""The Google APIs everything else uses, enabled before anything is created."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi_gcp as gcp

import pulumi

# What each API is for, so a removal is a decision, not an accident.
REQUIRED_APIS: dict[str, str] = {
    "apigateway.googleapis.com": "the one base URL in front of the functions",
    "artifactregistry.googleapis.com": "runner and function images",
    "cloudbuild.googleapis.com": "function builds, the runner image build",
    "cloudfunctions.googleapis.com": "submit, status, deadletter, reconcile",
    "cloudresourcemanager.googleapis.com": "project IAM bindings",
    "cloudscheduler.googleapis.com": "the reconcile tick and the nightly batch",
    "cloudtrace.googleapis.com": "one trace per job (jobs/tracing.py exports its spans there)",
    "firestore.googleapis.com": "jobs and batches documents",
    "iam.googleapis.com": "service accounts",
    "iamcredentials.googleapis.com": "OIDC/OAuth tokens minted for push and scheduler identities",
    "logging.googleapis.com": "structured logs",
    "monitoring.googleapis.com": "alert policies, the dashboard, the runner's Prometheus metrics (Managed Service for Prometheus)",
    "pubsub.googleapis.com": "the job queue and dead letters",
    "run.googleapis.com": "the GPU runner, the batch job, 2nd-gen functions",
    "servicecontrol.googleapis.com": "API Gateway's per-call checks",
    "servicemanagement.googleapis.com": "API Gateway's managed service",
    "storage.googleapis.com": "results, batch files, model weights, function sources",
    "workflows.googleapis.com": "the nightly batch definition",
    "workflowexecutions.googleapis.com": "the scheduler starting workflow executions",
}


@dataclass
class ApisArgs:
    project: pulumi.Input[str]
    services: list[str] = field(default_factory=lambda: sorted(REQUIRED_APIS))


class Apis(pulumi.ComponentResource):
    """Enables each API; `pulumi destroy` leaves them on (other workloads may use them)."""

    services: dict[str, gcp.projects.Service]

    def __init__(self, name: str, args: ApisArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not args.services:
            raise ValueError("Apis: at least one service is needed")
        if len(set(args.services)) != len(args.services):
            raise ValueError("Apis: services must be unique")
        super().__init__("llmq:infra:Apis", name, None, opts)
        self.services = {
            api: gcp.projects.Service(
                f"{name}-{api.split('.')[0]}",
                project=args.project,
                service=api,
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for api in args.services
        }
        self.register_outputs({"services": [s.service for s in self.services.values()]})
