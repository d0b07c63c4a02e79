"""The Artifact Registry repository for the runner image (built by cloudbuild.yaml) and the
functions' build images (their `docker_repository`)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi_gcp as gcp

import pulumi
from llmq_infra.common import child_options


@dataclass
class RegistryArgs:
    project: pulumi.Input[str]
    region: str
    repository_id: str
    keep_versions: int = 5  # per package; older images cost storage while idle
    labels: dict[str, str] | None = None


class Registry(pulumi.ComponentResource):
    repository: gcp.artifactregistry.Repository
    repository_path: pulumi.Output[str]  # projects/P/locations/L/repositories/R (functions' docker_repository)
    image_prefix: pulumi.Output[str]  # L-docker.pkg.dev/P/R (docker push target)

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.keep_versions < 1:
            raise ValueError("Registry: keep_versions must be at least 1")
        super().__init__("llmq:infra:Registry", name, None, opts)
        self.repository = gcp.artifactregistry.Repository(
            f"{name}-repository",
            project=args.project,
            location=args.region,
            repository_id=args.repository_id,
            format="DOCKER",
            description="llmq runner and function images",
            labels=args.labels,
            cleanup_policy_dry_run=False,
            cleanup_policies=[
                gcp.artifactregistry.RepositoryCleanupPolicyArgs(
                    id="keep-recent",
                    action="KEEP",
                    most_recent_versions=gcp.artifactregistry.RepositoryCleanupPolicyMostRecentVersionsArgs(
                        keep_count=args.keep_versions),
                ),
                gcp.artifactregistry.RepositoryCleanupPolicyArgs(
                    id="delete-old-untagged",
                    action="DELETE",
                    condition=gcp.artifactregistry.RepositoryCleanupPolicyConditionArgs(
                        tag_state="UNTAGGED", older_than="1209600s"),  # 14 days
                ),
            ],
            opts=child_options(self, opts),
        )
        self.repository_path = pulumi.Output.concat(
            "projects/", args.project, "/locations/", args.region, "/repositories/", self.repository.repository_id)
        self.image_prefix = pulumi.Output.concat(
            args.region, "-docker.pkg.dev/", args.project, "/", self.repository.repository_id)
        self.register_outputs({"repository_path": self.repository_path, "image_prefix": self.image_prefix})
