"""One HTTP Cloud Function (2nd gen) built from a source archive of its folder plus the shared
package, running as its own service account. Callers grant the account its roles and decide who
may invoke it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi_gcp as gcp

import pulumi
from llmq_infra.archive import content_digest, function_archive, function_files
from llmq_infra.common import child_options

INGRESS = ("ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB")
RUNTIME = "python311"  # the project's Python (pyproject: >=3.11)


@dataclass
class HttpFunctionArgs:
    project: str
    region: str
    function_name: str  # the cloud name (also the name of the Cloud Run service behind it)
    source: str  # folder under functions/
    entry_point: str
    sources_bucket: pulumi.Input[str]
    account_id: str
    build_service_account: pulumi.Input[str]  # projects/P/serviceAccounts/E
    docker_repository: pulumi.Input[str]  # projects/P/locations/L/repositories/R
    env: Mapping[str, pulumi.Input[str]]
    max_instances: int
    concurrency: int
    timeout_seconds: int = 60
    cpu: str = "1"
    memory: str = "512Mi"
    ingress: str = "ALLOW_ALL"
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)


class HttpFunction(pulumi.ComponentResource):
    function: gcp.cloudfunctionsv2.Function
    service_account: gcp.serviceaccount.Account
    url: pulumi.Output[str]  # https://<name>-<hash>-<region>.a.run.app
    service_name: pulumi.Output[str]  # for run.invoker bindings
    archive_paths: list[str]  # what the source archive holds (for review and tests)

    def __init__(self, name: str, args: HttpFunctionArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.ingress not in INGRESS:
            raise ValueError(f"HttpFunction: ingress must be one of {INGRESS}")
        if args.max_instances < 1 or args.concurrency < 1:
            raise ValueError("HttpFunction: max_instances and concurrency must be at least 1")
        if args.concurrency > 1 and float(args.cpu) < 1:
            raise ValueError("HttpFunction: concurrency above 1 needs at least 1 vCPU")
        if not 1 <= args.timeout_seconds <= 3600:
            raise ValueError("HttpFunction: timeout_seconds must be 1..3600")
        if not all(key.startswith("LLMQ_") for key in args.env):
            raise ValueError("HttpFunction: settings are LLMQ_* variables")
        files = function_files(args.source)  # fails the preview if a part is missing
        super().__init__("llmq:infra:HttpFunction", name, None, opts)
        self.archive_paths = sorted(files)

        self.service_account = gcp.serviceaccount.Account(
            f"{name}-sa", project=args.project, account_id=args.account_id,
            display_name=f"llmq {args.source} function", opts=child_options(self, opts))
        source = gcp.storage.BucketObject(
            f"{name}-source",
            bucket=args.sources_bucket,
            name=f"functions/{args.source}-{content_digest(files)[:20]}.zip",
            source=function_archive(files),
            content_type="application/zip",
            opts=child_options(self, opts),
        )
        self.function = gcp.cloudfunctionsv2.Function(
            f"{name}-function",
            project=args.project,
            location=args.region,
            name=args.function_name,
            description=args.description,
            labels=args.labels,
            build_config=gcp.cloudfunctionsv2.FunctionBuildConfigArgs(
                runtime=RUNTIME,
                entry_point=args.entry_point,
                source=gcp.cloudfunctionsv2.FunctionBuildConfigSourceArgs(
                    storage_source=gcp.cloudfunctionsv2.FunctionBuildConfigSourceStorageSourceArgs(
                        bucket=source.bucket, object=source.name)),
                service_account=args.build_service_account,
                docker_repository=args.docker_repository,
            ),
            service_config=gcp.cloudfunctionsv2.FunctionServiceConfigArgs(
                min_instance_count=0,  # idle costs nothing
                max_instance_count=args.max_instances,
                max_instance_request_concurrency=args.concurrency,  # the default is 1 request per instance
                available_cpu=args.cpu,
                available_memory=args.memory,
                timeout_seconds=args.timeout_seconds,
                ingress_settings=args.ingress,
                all_traffic_on_latest_revision=True,
                service_account_email=self.service_account.email,
                # functions-framework serves with 4 threads per CPU unless told: a status `wait` holds
                # a thread, so give every concurrent request its own.
                environment_variables={**dict(args.env), "THREADS": str(args.concurrency)},
            ),
            opts=child_options(self, opts),
        )
        # The run.app URL: the one Cloud Run's ingress and IAM checks are documented for (push
        # endpoints, OIDC audiences, the scheduler target); the cloudfunctions.net alias also works
        # for public callers.
        self.url = self.function.service_config.apply(lambda config: (config.uri or "") if config else "")
        self.service_name = self.function.name
        self.register_outputs({"url": self.url, "service_account": self.service_account.email,
                               "archive_paths": self.archive_paths})
