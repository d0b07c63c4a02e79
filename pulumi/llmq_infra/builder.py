"""The identity Cloud Build uses to build the functions, instead of a project-wide default
account (which new projects no longer grant anything, and old ones grant too much)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi_gcp as gcp

import pulumi
from llmq_infra.common import child_options


@dataclass
class FunctionBuilderArgs:
    project: str
    account_id: str
    repository: pulumi.Input[str]  # the Artifact Registry repository id the build pushes to
    region: str


class FunctionBuilder(pulumi.ComponentResource):
    service_account: gcp.serviceaccount.Account
    service_account_id: pulumi.Output[str]  # projects/P/serviceAccounts/E (build_config.service_account)

    def __init__(self, name: str, args: FunctionBuilderArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not args.account_id:
            raise ValueError("FunctionBuilder: account_id is required")
        super().__init__("llmq:infra:FunctionBuilder", name, None, opts)
        self.service_account = gcp.serviceaccount.Account(
            f"{name}-sa", project=args.project, account_id=args.account_id,
            display_name="llmq function builds", opts=child_options(self, opts))
        member = self.service_account.member
        gcp.projects.IAMMember(f"{name}-log-writer", project=args.project, role="roles/logging.logWriter",
                               member=member, opts=child_options(self, opts))
        gcp.artifactregistry.RepositoryIamMember(
            f"{name}-registry-writer", project=args.project, location=args.region, repository=args.repository,
            role="roles/artifactregistry.writer", member=member, opts=child_options(self, opts))
        # The build fetches the source from Cloud Functions' own staging bucket
        # (gcf-v2-sources-<number>-<region>), which the service creates during the first deploy: no
        # bucket-level grant can exist before it. Read-only objects at project level is what Google's
        # own examples grant; an IAM condition on the bucket name is not used because conditions are
        # not evaluated on buckets without uniform access, which that bucket may be.
        gcp.projects.IAMMember(f"{name}-source-reader", project=args.project, role="roles/storage.objectViewer",
                               member=member, opts=child_options(self, opts))
        self.service_account_id = self.service_account.id
        self.register_outputs({"service_account": self.service_account.email})
