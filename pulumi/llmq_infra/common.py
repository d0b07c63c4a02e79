"""Small helpers shared by the components (no resources of their own)."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi_gcp as gcp

import pulumi

# IAM members that make a resource public.
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")

# Every managed resource of a component waits for the component's own dependencies (the enabled
# APIs): Pulumi does not pass a component's depends_on down to its children.


def child_options(parent: pulumi.Resource, opts: pulumi.ResourceOptions | None,
                  *, depends_on: Sequence[pulumi.Resource] = ()) -> pulumi.ResourceOptions:
    """Options for a component's child: parented, and depending on what the component depends on."""
    inherited: list[pulumi.Resource] = []
    if opts is not None and opts.depends_on is not None:
        deps = opts.depends_on
        inherited = list(deps) if isinstance(deps, (list, tuple)) else [deps]  # type: ignore[list-item]
    return pulumi.ResourceOptions(parent=parent, depends_on=[*inherited, *depends_on])


def firestore_condition(project: str, database: str) -> gcp.projects.IAMMemberConditionArgs:
    """Limits a Firestore role to this deployment's database (IAM Conditions on the database name)."""
    return gcp.projects.IAMMemberConditionArgs(
        title=f"only-{database.strip('()')}-database",
        description="Firestore access limited to the llmq database",
        expression=f'resource.name == "projects/{project}/databases/{database}"',
    )


def duration(seconds: float) -> str:
    """Google's protobuf Duration string form ("600s")."""
    return f"{int(seconds)}s"
