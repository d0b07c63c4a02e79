"""The GPU runner for one model: a Cloud Run service on one NVIDIA L4 that scales to zero,
receives Pub/Sub pushes, loads the weights from the models bucket through a Cloud Storage
volume, and may be invoked only by the push identity (granted in queue.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pulumi_gcp as gcp

import pulumi
from jobs.constants import MAX_WAITING_BATCH_PUSHES, STREAM_INTERVAL_SECONDS
from llmq_infra.common import child_options, duration, firestore_condition

GPU_TYPE = "nvidia-l4"
GPU_LIMIT = "nvidia.com/gpu"
MODELS_MOUNT = "/models"
PORT = 8080
# Managed Service for Prometheus' collector for Cloud Run, beside the runner: its default RunMonitoring
# configuration scrapes the ingress container's /metrics on port 8080 (runner/metrics.py) once a minute,
# at start-up and at shut-down (docs/DEPLOY.md "Metrics").
METRICS_SIDECAR_IMAGE = "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.2.0"
STARTUP_PROBE_PERIOD_SECONDS = 10


@dataclass
class RunnerArgs:
    project: str
    region: str
    database: str
    service_name: str
    account_id: str
    image: str
    model_id: str
    model_path: str  # folder inside the models bucket
    max_model_len: int
    models_bucket: pulumi.Input[str]
    results_bucket: pulumi.Input[str]
    cpu: int
    memory_gib: int
    max_instances: int
    max_concurrency: int
    max_inflight: int
    lease_seconds: int
    generation_timeout_seconds: int
    request_timeout_seconds: int
    startup_timeout_seconds: int
    gpu_zonal_redundancy: bool = False
    internal_ingress: bool = True
    webhook_topic: str = ""  # LLMQ_WEBHOOK_TOPIC: where the end of a job or batch is announced
    labels: dict[str, str] = field(default_factory=dict)


class Runner(pulumi.ComponentResource):
    service: gcp.cloudrunv2.Service
    service_account: gcp.serviceaccount.Account
    url: pulumi.Output[str]
    service_name: pulumi.Output[str]
    request_timeout_seconds: int
    generation_timeout_seconds: int
    model_id: str

    def __init__(self, name: str, args: RunnerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.cpu < 4 or args.memory_gib < 16:
            raise ValueError("Runner: an L4 needs at least 4 vCPU and 16 GiB")
        if args.max_instances < 1:
            raise ValueError("Runner: max_instances must be at least 1")
        if args.max_inflight < args.max_concurrency:
            raise ValueError("Runner: max_inflight must be at least max_concurrency")
        if not args.generation_timeout_seconds < args.request_timeout_seconds:
            raise ValueError("Runner: generation must end before the request timeout")
        if not args.lease_seconds < args.request_timeout_seconds:
            raise ValueError("Runner: the lease must be shorter than the request timeout")
        super().__init__("llmq:infra:Runner", name, None, opts)
        child = child_options(self, opts)
        self.model_id = args.model_id
        self.request_timeout_seconds = args.request_timeout_seconds
        self.generation_timeout_seconds = args.generation_timeout_seconds

        self.service_account = gcp.serviceaccount.Account(
            f"{name}-sa", project=args.project, account_id=args.account_id,
            display_name=f"llmq runner ({args.model_id})", opts=child)
        member = self.service_account.member
        grants = [
            gcp.projects.IAMMember(f"{name}-firestore", project=args.project, role="roles/datastore.user",
                                   member=member, condition=firestore_condition(args.project, args.database),
                                   opts=child),
            # Results are overwritten on a retried finish (deterministic names): create + delete.
            gcp.storage.BucketIAMMember(f"{name}-results-writer", bucket=args.results_bucket,
                                        role="roles/storage.objectUser", member=member, opts=child),
            gcp.storage.BucketIAMMember(f"{name}-models-reader", bucket=args.models_bucket,
                                        role="roles/storage.objectViewer", member=member, opts=child),
            # Its spans to Cloud Trace; its metrics (the sidecar runs as the same identity) to Cloud Monitoring.
            gcp.projects.IAMMember(f"{name}-trace", project=args.project, role="roles/cloudtrace.agent",
                                   member=member, opts=child),
            gcp.projects.IAMMember(f"{name}-metrics", project=args.project, role="roles/monitoring.metricWriter",
                                   member=member, opts=child),
        ]

        env = {
            "LLMQ_PROJECT": args.project,
            "LLMQ_DATABASE": args.database,
            "LLMQ_RESULTS_BUCKET": args.results_bucket,
            "LLMQ_WEBHOOK_TOPIC": args.webhook_topic,
            "LLMQ_ENGINE": "vllm",
            "LLMQ_MODEL_PATH": f"{MODELS_MOUNT}/{args.model_path}",
            "LLMQ_MODEL_NAME": args.model_id,
            "LLMQ_MAX_MODEL_LEN": str(args.max_model_len),
            "LLMQ_MAX_CONCURRENCY": str(args.max_concurrency),
            "LLMQ_MAX_INFLIGHT": str(args.max_inflight),
            "LLMQ_MAX_WAITING_BATCH_PUSHES": str(MAX_WAITING_BATCH_PUSHES),
            "LLMQ_LEASE_SECONDS": str(args.lease_seconds),
            "LLMQ_GENERATION_TIMEOUT_SECONDS": str(args.generation_timeout_seconds),
            "LLMQ_STREAM_INTERVAL_SECONDS": f"{STREAM_INTERVAL_SECONDS:g}",
            "LLMQ_TRACE_EXPORTER": "gcp",
        }
        # The startup probe covers the whole model load (the app answers /readyz 503 until the engine
        # is ready); Cloud Run routes no push to the instance before it passes.
        failures = math.ceil(args.startup_timeout_seconds / STARTUP_PROBE_PERIOD_SECONDS)
        self.service = gcp.cloudrunv2.Service(
            f"{name}-service",
            project=args.project,
            location=args.region,
            name=args.service_name,
            description=f"llmq GPU runner for {args.model_id}",
            labels=args.labels,
            # Only Google-internal traffic (Pub/Sub push from this project) reaches the URL at all;
            # IAM then admits only the push identity.
            ingress="INGRESS_TRAFFIC_INTERNAL_ONLY" if args.internal_ingress else "INGRESS_TRAFFIC_ALL",
            deletion_protection=False,
            template=gcp.cloudrunv2.ServiceTemplateArgs(
                service_account=self.service_account.email,
                execution_environment="EXECUTION_ENVIRONMENT_GEN2",  # needed by the Cloud Storage volume
                # ≥ the ack deadline: Pub/Sub, not Cloud Run, decides when a push has taken too long.
                timeout=duration(args.request_timeout_seconds),
                # Batch pushes waiting for a batch slot hold requests too: they must never keep an
                # interactive push out of the instance (runner/settings.py, max_waiting_batch_pushes).
                max_instance_request_concurrency=args.max_inflight + MAX_WAITING_BATCH_PUSHES,
                scaling=gcp.cloudrunv2.ServiceTemplateScalingArgs(
                    min_instance_count=0,  # idle costs nothing: no GPU is billed without a request
                    max_instance_count=args.max_instances,
                ),
                node_selector=gcp.cloudrunv2.ServiceTemplateNodeSelectorArgs(accelerator=GPU_TYPE),
                gpu_zonal_redundancy_disabled=not args.gpu_zonal_redundancy,
                volumes=[gcp.cloudrunv2.ServiceTemplateVolumeArgs(
                    name="models",
                    gcs=gcp.cloudrunv2.ServiceTemplateVolumeGcsArgs(
                        bucket=args.models_bucket, read_only=True,
                        # Folders uploaded with `gcloud storage cp -r` have no placeholder objects.
                        mount_options=["implicit-dirs"]),
                )],
                containers=[gcp.cloudrunv2.ServiceTemplateContainerArgs(
                    name="runner",
                    image=args.image,
                    ports=gcp.cloudrunv2.ServiceTemplateContainerPortsArgs(container_port=PORT, name="http1"),
                    envs=[gcp.cloudrunv2.ServiceTemplateContainerEnvArgs(name=k, value=v) for k, v in env.items()],
                    resources=gcp.cloudrunv2.ServiceTemplateContainerResourcesArgs(
                        limits={"cpu": str(args.cpu), "memory": f"{args.memory_gib}Gi", GPU_LIMIT: "1"},
                        cpu_idle=False,  # GPU services are instance-billed: CPU always allocated
                        startup_cpu_boost=True,
                    ),
                    volume_mounts=[gcp.cloudrunv2.ServiceTemplateContainerVolumeMountArgs(
                        name="models", mount_path=MODELS_MOUNT)],
                    startup_probe=gcp.cloudrunv2.ServiceTemplateContainerStartupProbeArgs(
                        http_get=gcp.cloudrunv2.ServiceTemplateContainerStartupProbeHttpGetArgs(path="/readyz", port=PORT),
                        initial_delay_seconds=0,
                        period_seconds=STARTUP_PROBE_PERIOD_SECONDS,
                        timeout_seconds=5,
                        failure_threshold=failures,
                    ),
                    liveness_probe=gcp.cloudrunv2.ServiceTemplateContainerLivenessProbeArgs(
                        http_get=gcp.cloudrunv2.ServiceTemplateContainerLivenessProbeHttpGetArgs(path="/healthz", port=PORT),
                        period_seconds=30,
                        timeout_seconds=5,
                        failure_threshold=3,
                    ),
                ), gcp.cloudrunv2.ServiceTemplateContainerArgs(
                    name="metrics",
                    image=METRICS_SIDECAR_IMAGE,
                    depends_ons=["runner"],  # scraping starts once the runner's port is open
                    resources=gcp.cloudrunv2.ServiceTemplateContainerResourcesArgs(
                        limits={"cpu": "1", "memory": "512Mi"}, cpu_idle=False),
                )],
            ),
            # The runtime identity must hold its roles before the first revision starts.
            opts=child_options(self, opts, depends_on=grants),
        )
        self.url = self.service.uri
        self.service_name = self.service.name
        self.register_outputs({"url": self.url, "service_name": self.service_name,
                               "service_account": self.service_account.email})
