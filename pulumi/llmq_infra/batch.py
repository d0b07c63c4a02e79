"""The nightly batch: a Cloud Run job on one L4 running `python -m runner.batch`, the Workflows
definition that asks the platform's API (POST /v1/batches, which runs that job) for each file in the
batch bucket's inbox, and the Cloud Scheduler job that starts the workflow every night with an OAuth
token of an identity that may do only that."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pulumi_gcp as gcp

import pulumi
from llmq_infra.common import child_options, duration, firestore_condition
from llmq_infra.runner import GPU_LIMIT, GPU_TYPE, MODELS_MOUNT

WORKFLOW_FILE = Path(__file__).resolve().parents[2] / "workflows" / "nightly_batch.yaml"
BATCH_COMMAND = ["python", "-m", "runner.batch"]  # the workflow adds --input/--output per file
EXECUTIONS_API = "https://workflowexecutions.googleapis.com/v1/"
# Runs (and cancels) executions of this one job with per-execution arguments: run.jobs.run,
# run.jobs.runWithOverrides, run.executions.cancel. Narrower than roles/run.developer, which could
# also update the job (its image, command, identity) or delete it.
RUN_WITH_OVERRIDES_ROLE = "roles/run.jobsExecutorWithOverrides"

def workflow_definition(path: Path = WORKFLOW_FILE) -> str:
    """The workflow's source: the committed workflows/nightly_batch.yaml."""
    return path.read_text()


@dataclass
class NightlyBatchArgs:
    project: str
    region: str
    database: str
    job_name: str
    workflow_name: str
    scheduler_name: str
    job_account_id: str
    workflow_account_id: str
    scheduler_account_id: str
    image: str
    model_id: str
    model_aliases: dict[str, str]  # the deployment's (a batch file may name the model by an alias)
    model_path: str
    max_model_len: int
    max_concurrency: int
    models_bucket: pulumi.Input[str]
    batch_bucket: pulumi.Input[str]
    cpu: int
    memory_gib: int
    task_timeout_seconds: int
    max_retries: int
    schedule: str
    time_zone: str
    workflow_source: str
    gpu_zonal_redundancy: bool = False
    # Other identities that start this job with per-batch arguments (the submit function's, for
    # on-demand batches: POST /v1/batches). Granted on the job only.
    launcher_members: Sequence[pulumi.Input[str]] = ()
    # The API the workflow calls (workflows/nightly_batch.yaml: POST /v1/batches on submit, GET
    # /v1/batches/{id} on status, with OIDC tokens of its identity): the URLs, and the Cloud Run services
    # behind them, on which that identity gets roles/run.invoker.
    submit_url: pulumi.Input[str] = ""
    status_url: pulumi.Input[str] = ""
    # The audience of the workflow's ID tokens where the functions verify them themselves (api_key mode:
    # Api.token_audience); empty where Cloud Run IAM does (iam mode: the audience is the function's URL).
    api_audience: str = ""
    api_services: Sequence[pulumi.Input[str]] = ()
    webhook_topic: str = ""  # LLMQ_WEBHOOK_TOPIC: where the end of a job or batch is announced
    labels: dict[str, str] = field(default_factory=dict)


class NightlyBatch(pulumi.ComponentResource):
    job: gcp.cloudrunv2.Job
    job_service_account: gcp.serviceaccount.Account
    workflow: gcp.workflows.Workflow
    scheduler_job: gcp.cloudscheduler.Job

    def __init__(self, name: str, args: NightlyBatchArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.cpu < 4 or args.memory_gib < 16:
            raise ValueError("NightlyBatch: an L4 needs at least 4 vCPU and 16 GiB")
        if not 60 <= args.task_timeout_seconds <= 3600:
            raise ValueError("NightlyBatch: a GPU task runs at most about an hour (60..3600 s)")
        if len(args.schedule.split()) != 5:
            raise ValueError("NightlyBatch: schedule must be a cron expression")
        if not args.workflow_source.strip():
            raise ValueError("NightlyBatch: the workflow definition is empty")
        super().__init__("llmq:infra:NightlyBatch", name, None, opts)
        child = child_options(self, opts)

        # The job's identity: its batch files, the weights, the `batches` documents.
        job_sa = self.job_service_account = gcp.serviceaccount.Account(f"{name}-job-sa", project=args.project, account_id=args.job_account_id,
                                            display_name="llmq batch job", opts=child)
        job_grants = [
            gcp.projects.IAMMember(f"{name}-job-firestore", project=args.project, role="roles/datastore.user",
                                   member=job_sa.member, condition=firestore_condition(args.project, args.database),
                                   opts=child),
            gcp.storage.BucketIAMMember(f"{name}-job-batch-files", bucket=args.batch_bucket,
                                        role="roles/storage.objectUser", member=job_sa.member, opts=child),
            gcp.storage.BucketIAMMember(f"{name}-job-models-reader", bucket=args.models_bucket,
                                        role="roles/storage.objectViewer", member=job_sa.member, opts=child),
            gcp.projects.IAMMember(f"{name}-job-trace", project=args.project, role="roles/cloudtrace.agent",
                                   member=job_sa.member, opts=child),
        ]
        env = {
            "LLMQ_PROJECT": args.project,
            "LLMQ_DATABASE": args.database,
            "LLMQ_ENGINE": "vllm",
            "LLMQ_MODEL_PATH": f"{MODELS_MOUNT}/{args.model_path}",
            "LLMQ_MODEL_NAME": args.model_id,
            "LLMQ_MODEL_ALIASES": json.dumps(args.model_aliases),
            "LLMQ_WEBHOOK_TOPIC": args.webhook_topic,
            "LLMQ_MAX_MODEL_LEN": str(args.max_model_len),
            "LLMQ_MAX_CONCURRENCY": str(args.max_concurrency),
            "LLMQ_BATCH_BUCKET": args.batch_bucket,
            "LLMQ_TRACE_EXPORTER": "gcp",  # one `batch` span per file, with its line counts
        }
        self.job = gcp.cloudrunv2.Job(
            f"{name}-job",
            project=args.project,
            location=args.region,
            name=args.job_name,
            labels=args.labels,
            deletion_protection=False,
            template=gcp.cloudrunv2.JobTemplateArgs(
                task_count=1,
                parallelism=1,
                template=gcp.cloudrunv2.JobTemplateTemplateArgs(
                    service_account=job_sa.email,
                    execution_environment="EXECUTION_ENVIRONMENT_GEN2",
                    timeout=duration(args.task_timeout_seconds),
                    # GPU tasks are stopped, not migrated, on maintenance: a retry resumes the part.
                    max_retries=args.max_retries,
                    node_selector=gcp.cloudrunv2.JobTemplateTemplateNodeSelectorArgs(accelerator=GPU_TYPE),
                    gpu_zonal_redundancy_disabled=not args.gpu_zonal_redundancy,
                    volumes=[gcp.cloudrunv2.JobTemplateTemplateVolumeArgs(
                        name="models",
                        gcs=gcp.cloudrunv2.JobTemplateTemplateVolumeGcsArgs(
                            bucket=args.models_bucket, read_only=True, mount_options=["implicit-dirs"]),
                    )],
                    containers=[gcp.cloudrunv2.JobTemplateTemplateContainerArgs(
                        name="batch",
                        image=args.image,
                        commands=BATCH_COMMAND,
                        envs=[gcp.cloudrunv2.JobTemplateTemplateContainerEnvArgs(name=k, value=v)
                              for k, v in env.items()],
                        resources=gcp.cloudrunv2.JobTemplateTemplateContainerResourcesArgs(
                            limits={"cpu": str(args.cpu), "memory": f"{args.memory_gib}Gi", GPU_LIMIT: "1"}),
                        volume_mounts=[gcp.cloudrunv2.JobTemplateTemplateContainerVolumeMountArgs(
                            name="models", mount_path=MODELS_MOUNT)],
                    )],
                ),
            ),
            opts=child_options(self, opts, depends_on=job_grants),
        )

        # On-demand launchers (CloudRunBatchLauncher: JobsClient.run_job with overrides). Google's
        # "execute jobs" page asks only for a role on the job; iam.serviceAccounts.actAs on the job's
        # identity is documented for creating or updating a job, so it is not granted (docs/DEPLOY.md).
        for i, member in enumerate(args.launcher_members):
            gcp.cloudrunv2.JobIamMember(f"{name}-launcher-{i}", project=args.project, location=args.region,
                                        name=self.job.name, role=RUN_WITH_OVERRIDES_ROLE, member=member, opts=child)

        # The workflow's identity: call the API (which records `batches/{id}` and runs the job), list and
        # move batch files, write its call log. No Firestore and no job grant: the API does both.
        wf_sa = gcp.serviceaccount.Account(f"{name}-workflow-sa", project=args.project,
                                           account_id=args.workflow_account_id,
                                           display_name="llmq nightly batch workflow", opts=child)
        wf_grants: list[pulumi.Resource] = [
            gcp.storage.BucketIAMMember(f"{name}-workflow-batch-files", bucket=args.batch_bucket,
                                        role="roles/storage.objectUser", member=wf_sa.member, opts=child),
            gcp.projects.IAMMember(f"{name}-workflow-logs", project=args.project, role="roles/logging.logWriter",
                                   member=wf_sa.member, opts=child),
        ]
        wf_grants += [
            gcp.cloudrunv2.ServiceIamMember(f"{name}-workflow-calls-api-{i}", project=args.project,
                                            location=args.region, name=service, role="roles/run.invoker",
                                            member=wf_sa.member, opts=child)
            for i, service in enumerate(args.api_services)
        ]
        self.workflow = gcp.workflows.Workflow(
            f"{name}-workflow",
            project=args.project,
            region=args.region,
            name=args.workflow_name,
            description="llmq nightly batch: a batch through the API for each file in the inbox",
            labels=args.labels,
            service_account=wf_sa.email,
            source_contents=args.workflow_source,
            call_log_level="LOG_ERRORS_ONLY",
            user_env_vars={
                "LLMQ_BATCH_BUCKET": args.batch_bucket,
                "LLMQ_SUBMIT_URL": args.submit_url,
                "LLMQ_STATUS_URL": args.status_url,
                "LLMQ_API_AUDIENCE": args.api_audience,
            },
            deletion_protection=False,
            opts=child_options(self, opts, depends_on=wf_grants),
        )

        # The scheduler's identity may only start workflow executions. Workflows has no per-workflow
        # IAM, so the role is project-wide; this identity is used by nothing else.
        scheduler_sa = gcp.serviceaccount.Account(f"{name}-scheduler-sa", project=args.project,
                                                  account_id=args.scheduler_account_id,
                                                  display_name="llmq nightly batch scheduler", opts=child)
        invoker = gcp.projects.IAMMember(f"{name}-scheduler-workflows-invoker", project=args.project,
                                         role="roles/workflows.invoker", member=scheduler_sa.member, opts=child)
        # Executions API body: {"argument": "<JSON string>"}; Cloud Scheduler wants it base64-encoded.
        body = pulumi.Output.from_input(args.batch_bucket).apply(lambda bucket: base64.b64encode(json.dumps({
            "argument": json.dumps({"batch_bucket": bucket}),
        }).encode()).decode())
        self.scheduler_job = gcp.cloudscheduler.Job(
            f"{name}-nightly",
            project=args.project,
            region=args.region,
            name=args.scheduler_name,
            description="start the nightly batch workflow",
            schedule=args.schedule,
            time_zone=args.time_zone,
            retry_config=gcp.cloudscheduler.JobRetryConfigArgs(retry_count=3),
            http_target=gcp.cloudscheduler.JobHttpTargetArgs(
                uri=pulumi.Output.concat(EXECUTIONS_API, self.workflow.id, "/executions"),
                http_method="POST",
                headers={"Content-Type": "application/json"},
                body=body,
                # Google APIs take OAuth access tokens (OIDC is for Cloud Run / functions).
                oauth_token=gcp.cloudscheduler.JobHttpTargetOauthTokenArgs(
                    service_account_email=scheduler_sa.email,
                    scope="https://www.googleapis.com/auth/cloud-platform"),
            ),
            opts=child_options(self, opts, depends_on=[invoker]),
        )
        self.register_outputs({"job": self.job.name, "workflow": self.workflow.name,
                               "scheduler_job": self.scheduler_job.name})
