"""The Pulumi program under mocks: the real `pulumi/__main__.py` runs against
`pulumi.runtime.Mocks` (no CLI, no provider plugin, no network), every resource it registers is
recorded with its inputs, and each test asserts one property of the deployment.

Inputs arrive as the engine sees them: camelCase keys, numbers as floats. The mocks are set up
in a module-scoped fixture of this module only, so no other test module runs under them."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import runpy
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

import pulumi
from jobs.settings import ApiSettings
from runner.settings import RunnerSettings

REPO = Path(__file__).resolve().parents[1]
PROGRAM = REPO / "pulumi"
PROJECT = "llmq-test-project"
PROJECT_NUMBER = "123456789012"
REGION = "us-central1"
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/llmq/runner:v1"
CONFIG = {"gcp:project": PROJECT, "llmq:image": IMAGE}
PUBSUB_AGENT = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
# pulumi_gcp's generated modules warn at import about their own deprecated aliases.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_gcp.*")

FUNCTIONS = {"submit": "submit", "status": "status", "completions": "completions", "files": "files",
             "deadletter": "deadletter", "reconcile": "reconcile", "webhooks": "webhooks"}

SERVICE = "gcp:cloudrunv2/service:Service"
JOB = "gcp:cloudrunv2/job:Job"
FUNCTION = "gcp:cloudfunctionsv2/function:Function"
SUBSCRIPTION = "gcp:pubsub/subscription:Subscription"
ACCOUNT = "gcp:serviceaccount/account:Account"
SCHEDULER = "gcp:cloudscheduler/job:Job"
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_GRANT = "gcp:storage/bucketIAMMember:BucketIAMMember"
JOB_GRANT = "gcp:cloudrunv2/jobIamMember:JobIamMember"
BATCH_BUCKET = f"{PROJECT}-llmq-batch"


# --- mocks ------------------------------------------------------------------------------------

@dataclass
class Recorded:
    typ: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]


class GcpMocks(pulumi.runtime.Mocks):
    """Answers like the provider would for the outputs the program reads (ids, emails, URLs)."""

    def __init__(self) -> None:
        self.resources: list[Recorded] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        outputs = dict(inputs)
        outputs.setdefault("name", args.name)
        resource_id = f"{args.name}-id"
        name = inputs.get("name")
        if args.typ == ACCOUNT:
            email = f"{inputs['accountId']}@{PROJECT}.iam.gserviceaccount.com"
            resource_id = f"projects/{PROJECT}/serviceAccounts/{email}"
            outputs.update(email=email, member=f"serviceAccount:{email}", name=resource_id)
        elif args.typ == "gcp:projects/serviceIdentity:ServiceIdentity":
            agent = inputs["service"].split(".")[0]
            email = f"service-{PROJECT_NUMBER}@gcp-sa-{agent}.iam.gserviceaccount.com"
            outputs.update(email=email, member=f"serviceAccount:{email}")
        elif args.typ == "gcp:pubsub/topic:Topic":
            resource_id = f"projects/{PROJECT}/topics/{name}"
        elif args.typ == SUBSCRIPTION:
            resource_id = f"projects/{PROJECT}/subscriptions/{name}"
        elif args.typ == "gcp:workflows/workflow:Workflow":
            resource_id = f"projects/{PROJECT}/locations/{inputs['region']}/workflows/{name}"
        elif args.typ == SERVICE:
            outputs["uri"] = f"https://{name}-abc123-uc.a.run.app"
        elif args.typ == FUNCTION:
            outputs["url"] = f"https://{REGION}-{PROJECT}.cloudfunctions.net/{name}"
            outputs["serviceConfig"] = {**inputs["serviceConfig"], "uri": f"https://{name}-abc123-uc.a.run.app"}
        self.resources.append(Recorded(args.typ, args.name, inputs, outputs))
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None  # the program invokes no data sources


@dataclass
class Deployment:
    resources: list[Recorded]
    exports: dict[str, Any]
    program: dict[str, Any] = field(default_factory=dict)

    def of(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, **where: Any) -> Recorded:
        found = [r for r in self.of(typ) if all(r.inputs.get(k) == v for k, v in where.items())]
        assert len(found) == 1, f"expected one {typ} with {where}, found {[r.name for r in found]}"
        return found[0]

    def output(self, typ: str, key: str, **where: Any) -> Any:
        return self.one(typ, **where).outputs[key]

    def account(self, account_id: str) -> str:
        return f"serviceAccount:{account_id}@{PROJECT}.iam.gserviceaccount.com"

    def grants(self) -> list[Recorded]:
        """Every IAM member resource (project, bucket, topic, subscription, service, job, ...)."""
        return [r for r in self.resources if "iammember" in r.typ.lower()]

    def roles_of(self, member: str) -> set[tuple[str, str]]:
        """(resource type, role) pairs granted to a member."""
        return {(r.typ.split(":")[1].split("/")[0], r.inputs["role"]) for r in self.grants()
                if r.inputs["member"] == member}

    def function(self, name: str) -> Recorded:
        return self.one(FUNCTION, name=f"llmq-{name}")

    def function_url(self, name: str) -> str:
        return self.function(name).outputs["serviceConfig"]["uri"]


def deploy(config: dict[str, str]) -> Deployment:
    """Run pulumi/__main__.py as the Python language host does (runpy on the folder) under fresh mocks."""
    mocks = GcpMocks()
    pulumi.runtime.settings.reset_options()  # a fresh root stack for each run
    pulumi.runtime.set_all_config(config)
    pulumi.runtime.set_mocks(mocks, project="llmq", stack="test", preview=False)
    exports: dict[str, Any] = {}
    program: dict[str, Any] = {}
    export = pulumi.export

    def capture(name: str, value: Any) -> None:
        exports[name] = value
        export(name, value)

    @pulumi.runtime.test
    def run() -> None:
        pulumi.export = capture
        try:
            program.update(runpy.run_path(str(PROGRAM), run_name="__main__"))
        finally:
            pulumi.export = export

    run()
    return Deployment(mocks.resources, exports, program)


@pytest.fixture(scope="module")
def infra() -> Iterator[None]:
    """The program's package on sys.path (Pulumi puts the program folder first), for the unit tests.

    Pulumi's runtime works on the thread's current event loop, which an earlier test's asyncio.run()
    leaves unset: give it one. It stays current afterwards, as Pulumi keeps using it."""
    sys.path.insert(0, str(PROGRAM))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            asyncio.get_event_loop()
        except RuntimeError:
            asyncio.set_event_loop(asyncio.new_event_loop())
    try:
        yield
    finally:
        sys.path.remove(str(PROGRAM))
        # Leave the Pulumi runtime as found: no mocks, no config, no root stack.
        pulumi.runtime.set_all_config({})
        pulumi.runtime.settings.reset_options()


@pytest.fixture(scope="module")
def deployment(infra: None) -> Deployment:
    return deploy(CONFIG)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("envs", [])}


def runner(d: Deployment) -> Recorded:
    services = d.of(SERVICE)
    assert len(services) == 1
    return services[0]


def seconds(text: str) -> float:
    assert text.endswith("s"), text
    return float(text[:-1])


# --- the GPU runner ---------------------------------------------------------------------------

def test_runner_runs_on_one_l4_with_enough_cpu_and_memory(deployment: Deployment) -> None:
    template = runner(deployment).inputs["template"]
    assert template["nodeSelector"] == {"accelerator": "nvidia-l4"}
    container, metrics = template["containers"]  # the runner, and the metrics sidecar beside it
    limits = container["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and "nvidia.com/gpu" not in metrics["resources"]["limits"]
    assert int(limits["cpu"]) >= 4 and int(limits["memory"].removesuffix("Gi")) >= 16
    assert (limits["cpu"], limits["memory"]) == ("8", "32Gi")  # the recommended size
    # GPU services are instance-billed: CPU stays allocated (no throttling between requests).
    assert container["resources"]["cpuIdle"] is False
    assert template["gpuZonalRedundancyDisabled"] is True


def test_runner_scales_to_zero_with_bounded_instances_and_concurrency(deployment: Deployment) -> None:
    template = runner(deployment).inputs["template"]
    assert template["scaling"]["minInstanceCount"] == 0
    assert 1 <= template["scaling"]["maxInstanceCount"] <= 20
    env = env_of(template["containers"][0])
    # Cloud Run's concurrency is the runner's in-flight bound and the batch pushes it holds waiting for a
    # slot (so that they never keep an interactive push out); the engine runs fewer at once.
    assert template["maxInstanceRequestConcurrency"] == (int(env["LLMQ_MAX_INFLIGHT"])
                                                         + int(env["LLMQ_MAX_WAITING_BATCH_PUSHES"]))
    assert int(env["LLMQ_MAX_INFLIGHT"]) >= int(env["LLMQ_MAX_CONCURRENCY"])


def test_runner_startup_probe_covers_model_load(deployment: Deployment) -> None:
    container = runner(deployment).inputs["template"]["containers"][0]
    probe = container["startupProbe"]
    assert probe["httpGet"]["path"] == "/readyz"  # 503 until the model is loaded
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600
    assert probe["timeoutSeconds"] < probe["periodSeconds"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_runner_reads_weights_from_the_models_bucket_mount(deployment: Deployment) -> None:
    template = runner(deployment).inputs["template"]
    models_bucket = deployment.one(BUCKET, name=f"{PROJECT}-llmq-models").inputs["name"]
    (volume,) = template["volumes"]
    assert volume["gcs"]["bucket"] == models_bucket and volume["gcs"]["readOnly"] is True
    (mount,) = template["containers"][0]["volumeMounts"]
    assert mount["name"] == volume["name"]
    env = env_of(template["containers"][0])
    assert env["LLMQ_MODEL_PATH"].startswith(mount["mountPath"] + "/")
    assert template["executionEnvironment"] == "EXECUTION_ENVIRONMENT_GEN2"


def test_runner_env_is_the_runner_settings(deployment: Deployment) -> None:
    env = env_of(runner(deployment).inputs["template"]["containers"][0])
    fields = set(RunnerSettings.model_fields)
    assert all(k.startswith("LLMQ_") and k[5:].lower() in fields for k in env), env
    values: dict[str, Any] = {k[5:].lower(): v for k, v in env.items()}
    settings = RunnerSettings(**values)  # validates every value
    assert settings.engine == "vllm"
    assert settings.project == PROJECT
    assert settings.results_bucket == f"{PROJECT}-llmq-results"
    assert settings.model_name == "qwen2.5-7b-instruct"


def test_runner_ingress_is_internal_and_only_the_push_identity_may_invoke_it(deployment: Deployment) -> None:
    service = runner(deployment)
    assert service.inputs["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    invokers = [r for r in deployment.of("gcp:cloudrunv2/serviceIamMember:ServiceIamMember")
                if r.inputs["name"] == service.inputs["name"]]
    assert [(r.inputs["role"], r.inputs["member"]) for r in invokers] == [
        ("roles/run.invoker", deployment.account("llmq-push"))]
    assert deployment.roles_of(deployment.account("llmq-push")) == {("cloudrunv2", "roles/run.invoker")}


# --- the queue --------------------------------------------------------------------------------

def jobs_subscription(d: Deployment) -> Recorded:
    return d.one(SUBSCRIPTION, topic="llmq-jobs")


def test_push_subscription_calls_the_runner_with_an_oidc_token(deployment: Deployment) -> None:
    sub = jobs_subscription(deployment)
    uri = runner(deployment).outputs["uri"]
    push = sub.inputs["pushConfig"]
    assert push["pushEndpoint"] == f"{uri}/push"
    assert push["oidcToken"] == {"serviceAccountEmail": f"llmq-push@{PROJECT}.iam.gserviceaccount.com",
                                 "audience": uri}
    assert sub.inputs["expirationPolicy"] == {"ttl": ""}  # an idle subscription must not expire
    assert not sub.inputs.get("filter")  # one model: no filter


def test_ack_deadline_covers_the_generation_budget_and_the_runner_timeout_covers_it(deployment: Deployment) -> None:
    ack = jobs_subscription(deployment).inputs["ackDeadlineSeconds"]
    template = runner(deployment).inputs["template"]
    env = env_of(template["containers"][0])
    assert 10 <= ack <= 600
    assert float(env["LLMQ_GENERATION_TIMEOUT_SECONDS"]) + 30 <= ack  # time left to write the result
    assert float(env["LLMQ_LEASE_SECONDS"]) < ack
    assert seconds(template["timeout"]) >= ack


def test_retry_and_dead_letter_policy(deployment: Deployment) -> None:
    sub = jobs_subscription(deployment)
    retry = sub.inputs["retryPolicy"]
    assert 0 < seconds(retry["minimumBackoff"]) <= seconds(retry["maximumBackoff"]) <= 600
    policy = sub.inputs["deadLetterPolicy"]
    assert policy["deadLetterTopic"] == f"projects/{PROJECT}/topics/llmq-jobs-dead-letter"
    assert 5 <= policy["maxDeliveryAttempts"] <= 100


def test_pubsub_service_agent_may_dead_letter(deployment: Deployment) -> None:
    publisher = deployment.one("gcp:pubsub/topicIAMMember:TopicIAMMember", topic="llmq-jobs-dead-letter")
    assert (publisher.inputs["role"], publisher.inputs["member"]) == ("roles/pubsub.publisher", PUBSUB_AGENT)
    subscriber = deployment.one("gcp:pubsub/subscriptionIAMMember:SubscriptionIAMMember",
                                subscription=jobs_subscription(deployment).inputs["name"])
    assert (subscriber.inputs["role"], subscriber.inputs["member"]) == ("roles/pubsub.subscriber", PUBSUB_AGENT)
    assert deployment.one("gcp:projects/serviceIdentity:ServiceIdentity").inputs["service"] == "pubsub.googleapis.com"


def test_dead_letters_go_to_the_cpu_function_and_are_kept_for_inspection(deployment: Deployment) -> None:
    dead_letter_subs = [s for s in deployment.of(SUBSCRIPTION) if s.inputs["topic"] == "llmq-jobs-dead-letter"]
    push = [s for s in dead_letter_subs if s.inputs.get("pushConfig")]
    pull = [s for s in dead_letter_subs if not s.inputs.get("pushConfig")]
    assert len(push) == 1 and len(pull) == 1
    url = deployment.function_url("deadletter")
    assert push[0].inputs["pushConfig"]["pushEndpoint"] == url
    assert push[0].inputs["pushConfig"]["oidcToken"] == {
        "serviceAccountEmail": f"llmq-dl-push@{PROJECT}.iam.gserviceaccount.com", "audience": url}
    assert "deadLetterPolicy" not in push[0].inputs  # nothing behind the dead-letter queue
    assert deployment.roles_of(deployment.account("llmq-dl-push")) == {("cloudrunv2", "roles/run.invoker")}
    assert seconds(pull[0].inputs["messageRetentionDuration"]) >= 86400
    assert not any("runner" in (s.inputs["pushConfig"]["pushEndpoint"]) for s in push)  # never the GPU


def test_several_models_get_one_runner_and_one_filtered_subscription_each(infra: None) -> None:
    models: list[dict[str, Any]] = [
        {"id": "qwen2.5-7b-instruct", "path": "qwen7b", "key": "qwen7b"},
        {"id": "llama-3.1-8b", "path": "llama8b", "key": "llama8b", "max_model_len": 4096, "max_tokens": 512}]
    d = deploy({**CONFIG, "llmq:models": json.dumps(models)})
    services = {s.inputs["name"]: s for s in d.of(SERVICE)}
    assert set(services) == {"llmq-runner-qwen7b", "llmq-runner-llama8b"}
    for model in models:
        service = services[f"llmq-runner-{model['key']}"]
        assert env_of(service.inputs["template"]["containers"][0])["LLMQ_MODEL_NAME"] == model["id"]
        sub = d.one(SUBSCRIPTION, name=f"llmq-jobs-{model['key']}")
        assert sub.inputs["filter"] == f'attributes.model = "{model["id"]}"'
        assert sub.inputs["pushConfig"]["pushEndpoint"] == service.outputs["uri"] + "/push"
        agent = d.one("gcp:pubsub/subscriptionIAMMember:SubscriptionIAMMember", subscription=sub.inputs["name"])
        assert agent.inputs["member"] == PUBSUB_AGENT
    listed = json.loads(d.function("submit").inputs["serviceConfig"]["environmentVariables"]["LLMQ_MODELS"])
    assert [m["id"] for m in listed] == [m["id"] for m in models]  # the default first


# --- the store --------------------------------------------------------------------------------

def field_of(d: Deployment, collection: str, name: str) -> Recorded:
    return d.one("gcp:firestore/field:Field", collection=collection, field=name)


def test_ttl_policies_on_expire_at(deployment: Deployment) -> None:
    for collection in ("jobs", "batches", "request"):
        ttl = field_of(deployment, collection, "expire_at")
        assert ttl.inputs["ttlConfig"] == {}  # an empty block enables the policy
        assert ttl.inputs["indexConfig"] == {}  # the TTL field itself is not indexed


def test_timestamps_are_exempt_from_single_field_indexes(deployment: Deployment) -> None:
    for name in ("created_at", "started_at", "finished_at", "lease_expires_at"):
        assert field_of(deployment, "jobs", name).inputs["indexConfig"] == {}, name
    # Never queried: the job's trace id is read from its document.
    assert field_of(deployment, "jobs", "trace_id").inputs["indexConfig"] == {}


def test_indexes_serve_the_reconciler_and_the_runner_queries(deployment: Deployment) -> None:
    composite = {(r.inputs["collection"], *((f["fieldPath"], f["order"]) for f in r.inputs["fields"]))
                 for r in deployment.of("gcp:firestore/index:Index")}
    assert composite == {("jobs", ("status", "ASCENDING"), ("created_at", "ASCENDING")),
                         ("jobs", ("status", "ASCENDING"), ("lease_expires_at", "ASCENDING")),
                         # the submissions-per-minute quota: tenant == T AND created_at >= T - 1 min
                         ("jobs", ("tenant", "ASCENDING"), ("created_at", "ASCENDING")),
                         # the reconciler's stale batches: status IN [open] AND updated_at < T
                         ("batches", ("status", "ASCENDING"), ("updated_at", "ASCENDING")),
                         # OpenAI's lists: GET /v1/batches (newest first), GET /v1/files (either order, a purpose)
                         ("batches", ("tenant", "ASCENDING"), ("created_at", "DESCENDING")),
                         ("files", ("tenant", "ASCENDING"), ("created_at", "DESCENDING")),
                         ("files", ("tenant", "ASCENDING"), ("created_at", "ASCENDING")),
                         ("files", ("tenant", "ASCENDING"), ("purpose", "ASCENDING"), ("created_at", "DESCENDING")),
                         ("files", ("tenant", "ASCENDING"), ("purpose", "ASCENDING"), ("created_at", "ASCENDING"))}
    instance = field_of(deployment, "jobs", "runner_instance").inputs["indexConfig"]
    assert instance == {"indexes": [{"order": "ASCENDING", "queryScope": "COLLECTION"}]}


def test_firestore_database_is_kept_on_destroy(deployment: Deployment) -> None:
    database = deployment.one("gcp:firestore/database:Database")
    assert database.inputs["name"] == "(default)" and database.inputs["type"] == "FIRESTORE_NATIVE"
    assert database.inputs["deletionPolicy"] == "ABANDON"


def test_buckets_are_private_uniform_and_expire(deployment: Deployment) -> None:
    buckets = {b.inputs["name"]: b.inputs for b in deployment.of(BUCKET)}
    assert set(buckets) == {f"{PROJECT}-llmq-{role}" for role in ("results", "batch", "models", "sources")}
    for bucket in buckets.values():
        assert bucket["uniformBucketLevelAccess"] is True
        assert bucket["publicAccessPrevention"] == "enforced"
        assert bucket["location"] == REGION
    for role in ("results", "batch"):
        rules = buckets[f"{PROJECT}-llmq-{role}"]["lifecycleRules"]
        deletes = [r["condition"]["age"] for r in rules if r["action"]["type"] == "Delete" and "age" in r["condition"]]
        assert deletes == [30]
    # Uploaded files with a shorter expiry go once their custom time (the expiry) has passed.
    batch_rules = buckets[f"{PROJECT}-llmq-batch"]["lifecycleRules"]
    assert {"action": {"type": "Delete"}, "condition": {"daysSinceCustomTime": 0, "matchesPrefixes": ["files/"]}} \
        in batch_rules
    models_rules = buckets[f"{PROJECT}-llmq-models"]["lifecycleRules"]
    assert not [r for r in models_rules if r["action"]["type"] == "Delete"]  # weights stay


# --- the functions ----------------------------------------------------------------------------

def expected_archive(function: str) -> set[str]:
    files = {p.relative_to(REPO / "functions" / function).as_posix()
             for p in (REPO / "functions" / function).rglob("*") if p.is_file()}
    files |= {p.relative_to(REPO).as_posix() for p in (REPO / "jobs").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    files = {f for f in files if "__pycache__" not in f and not f.endswith(".pyc")}
    return files | {"openapi.yaml"}


def test_function_archives_hold_the_function_the_shared_package_and_the_api_document(deployment: Deployment) -> None:
    objects = {o.inputs["name"]: o for o in deployment.of("gcp:storage/bucketObject:BucketObject")}
    for name in FUNCTIONS:
        fn = deployment.function(name)
        source = fn.inputs["buildConfig"]["source"]["storageSource"]
        assert source["bucket"] == f"{PROJECT}-llmq-sources"
        archive = objects[source["object"]].inputs["source"]
        assert isinstance(archive, pulumi.AssetArchive)
        paths = set(archive.assets)
        assert paths == expected_archive(name), name
        assert {"main.py", "requirements.txt", "openapi.yaml", "jobs/__init__.py"} <= paths
        assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]
        main, package = archive.assets["main.py"], archive.assets["jobs/__init__.py"]
        assert isinstance(main, pulumi.FileAsset) and isinstance(package, pulumi.FileAsset)
        assert Path(main.path) == REPO / "functions" / name / "main.py"
        assert Path(package.path) == REPO / "jobs" / "__init__.py"


def test_functions_are_gen2_scale_to_zero_and_are_set_up_for_concurrency(deployment: Deployment) -> None:
    for name, entry_point in FUNCTIONS.items():
        fn = deployment.function(name).inputs
        assert fn["buildConfig"]["entryPoint"] == entry_point
        assert fn["buildConfig"]["runtime"] == "python311"
        assert fn["buildConfig"]["serviceAccount"].endswith(f"llmq-build@{PROJECT}.iam.gserviceaccount.com")
        config = fn["serviceConfig"]
        assert config["minInstanceCount"] == 0
        assert 1 <= config["maxInstanceCount"] <= 100
        assert config["serviceAccountEmail"] == f"llmq-{name}@{PROJECT}.iam.gserviceaccount.com"
        if config["maxInstanceRequestConcurrency"] > 1:
            assert float(config["availableCpu"]) >= 1
        assert config["environmentVariables"]["THREADS"] == str(int(config["maxInstanceRequestConcurrency"]))
    for name in ("submit", "status"):
        assert deployment.function(name).inputs["serviceConfig"]["maxInstanceRequestConcurrency"] >= 10
    status = deployment.function("status").inputs["serviceConfig"]
    assert status["timeoutSeconds"] > int(status["environmentVariables"]["LLMQ_MAX_WAIT_SECONDS"])
    # completions waits on its job: a long timeout, the wait ending before it, many waiting requests at once.
    completions = deployment.function("completions").inputs["serviceConfig"]
    assert completions["timeoutSeconds"] == 3600 and completions["maxInstanceRequestConcurrency"] >= 250
    assert completions["timeoutSeconds"] > float(completions["environmentVariables"]["LLMQ_COMPLETION_TIMEOUT_SECONDS"])
    assert deployment.function("reconcile").inputs["serviceConfig"]["maxInstanceCount"] == 1
    for name in ("deadletter", "reconcile"):
        assert deployment.function(name).inputs["serviceConfig"]["ingressSettings"] == "ALLOW_INTERNAL_ONLY"


def test_function_env_is_the_api_settings(deployment: Deployment) -> None:
    fields = set(ApiSettings.model_fields)
    for name in FUNCTIONS:
        env = {k: v for k, v in deployment.function(name).inputs["serviceConfig"]["environmentVariables"].items()
               if k.startswith("LLMQ_")}
        assert all(k[5:].lower() in fields for k in env), env
        values = {k[5:].lower(): json.loads(v) if k in JSON_SETTINGS else v for k, v in env.items()}
        settings = ApiSettings(**values)  # validates every value (models as ModelSpec, numbers)
        assert settings.project == PROJECT
        if name != "webhooks":  # it serves no model and publishes no jobs (its messages come by push)
            assert settings.topics == ["llmq-jobs"]  # production publishes to one topic
            assert settings.webhook_topic == "llmq-webhook-deliveries"
            assert settings.catalog.default.id == "qwen2.5-7b-instruct"


JSON_SETTINGS = ("LLMQ_TOPICS", "LLMQ_BATCH_PRIORITY_TOPICS", "LLMQ_MODELS", "LLMQ_MODEL_ALIASES", "LLMQ_TOKEN_TENANTS",
                 "LLMQ_NIGHTLY_TENANTS")


def api_settings_of(d: Deployment, name: str) -> tuple[dict[str, str], ApiSettings]:
    env = {k: v for k, v in d.function(name).inputs["serviceConfig"]["environmentVariables"].items()
           if k.startswith("LLMQ_")}
    values = {k[5:].lower(): json.loads(v) if k in JSON_SETTINGS else v for k, v in env.items()}
    return env, ApiSettings(**values)


def test_model_aliases_reach_the_api_and_the_batch_job(infra: None) -> None:
    d = deploy({**CONFIG, "llmq:modelAliases": json.dumps({"gpt-3.5-turbo-0125": "qwen2.5-7b-instruct"})})
    for function in ("submit", "status"):
        _, settings = api_settings_of(d, function)
        assert settings.catalog.resolve("gpt-3.5-turbo-0125") is settings.catalog.resolve("qwen2.5-7b-instruct")
    job_env = env_of(d.one(JOB).inputs["template"]["template"]["containers"][0])
    assert json.loads(job_env["LLMQ_MODEL_ALIASES"]) == {"gpt-3.5-turbo-0125": "qwen2.5-7b-instruct"}


def test_submit_launches_on_demand_batches_on_the_batch_job(deployment: Deployment) -> None:
    env, settings = api_settings_of(deployment, "submit")
    job = deployment.one(JOB).inputs
    assert settings.batch_launcher == "cloudrun" and env["LLMQ_BATCH_LAUNCHER"] == "cloudrun"  # explicit
    assert (settings.batch_job, settings.region) == (job["name"], job["location"]) == ("llmq-batch", REGION)
    assert settings.project == PROJECT
    assert settings.batch_bucket == BATCH_BUCKET
    assert env_of(job["template"]["template"]["containers"][0])["LLMQ_BATCH_BUCKET"] == settings.batch_bucket
    # API keys by default, with the default quotas.
    assert env["LLMQ_AUTH_MODE"] == "api_key" and settings.auth_mode == "api_key"
    assert (settings.quota_submissions_per_minute, settings.quota_queued_jobs) == (600, 10_000)


def test_status_gets_only_what_reading_needs(deployment: Deployment) -> None:
    env, settings = api_settings_of(deployment, "status")
    assert settings.auth_mode == "api_key"
    assert not {k for k in env if k.startswith(("LLMQ_BATCH_", "LLMQ_QUOTA_"))} and "LLMQ_REGION" not in env
    assert deployment.roles_of(deployment.account("llmq-status")) == {("projects", "roles/datastore.viewer")}


def test_submit_may_run_the_batch_job_and_write_only_ondemand_input(deployment: Deployment) -> None:
    submit = deployment.account("llmq-submit")
    (runs_job,) = [g for g in deployment.of(JOB_GRANT) if g.inputs["member"] == submit]
    # Scoped to the one job; the narrowest predefined role with run.jobs.runWithOverrides.
    assert (runs_job.inputs["name"], runs_job.inputs["location"], runs_job.inputs["role"]) == (
        "llmq-batch", REGION, "roles/run.jobsExecutorWithOverrides")
    assert runs_job.inputs["name"] == deployment.one(JOB).inputs["name"]
    buckets = {g.inputs["role"]: g.inputs for g in deployment.of(BUCKET_GRANT) if g.inputs["member"] == submit}
    assert set(buckets) == {"roles/storage.objectViewer", "roles/storage.objectUser"}
    assert all(g["bucket"] == BATCH_BUCKET for g in buckets.values())
    assert "condition" not in buckets["roles/storage.objectViewer"]  # input_uri may name any object
    from jobs.constants import ONDEMAND_PREFIX  # where POST /v1/batches stores inline input

    assert buckets["roles/storage.objectUser"]["condition"]["expression"] == (
        f'resource.name.startsWith("projects/_/buckets/{BATCH_BUCKET}/objects/{ONDEMAND_PREFIX}")')
    # Nothing else: no actAs on the job's identity, no project-wide role beyond the database-scoped one and
    # Cloud Trace's span writer (which exists only project-wide).
    assert deployment.roles_of(submit) == {
        ("projects", "roles/datastore.user"), ("pubsub", "roles/pubsub.publisher"),
        ("cloudrunv2", "roles/run.jobsExecutorWithOverrides"), ("projects", "roles/cloudtrace.agent"),
        ("storage", "roles/storage.objectViewer"), ("storage", "roles/storage.objectUser")}
    assert [g.inputs["role"] for g in deployment.grants() if g.inputs["member"] == submit
            and g.typ == "gcp:projects/iAMMember:IAMMember" and "condition" not in g.inputs] == ["roles/cloudtrace.agent"]


def test_api_auth_settings_reach_both_functions(infra: None) -> None:
    d = deploy({**CONFIG, "llmq:apiAuthMode": "iam", "llmq:apiInvokers": json.dumps(["group:team@example.com"]),
                "llmq:quotaSubmissionsPerMinute": "30", "llmq:quotaQueuedJobs": "0"})
    _, submit = api_settings_of(d, "submit")
    _, status = api_settings_of(d, "status")
    assert submit.auth_mode == status.auth_mode == "iam"
    # Cloud Run IAM checks the workflow's tokens at the door: no tokens verified in the functions, and the
    # workflow's audience is each function's URL.
    assert submit.token_tenants == status.token_tenants == {}
    assert submit.nightly_tenants == [f"llmq-workflow@{PROJECT}.iam.gserviceaccount.com"]  # its email: its tenant
    assert d.one("gcp:workflows/workflow:Workflow").inputs["userEnvVars"]["LLMQ_API_AUDIENCE"] == ""
    assert (submit.quota_submissions_per_minute, submit.quota_queued_jobs) == (30, 0)


def test_reconcile_is_called_every_five_minutes_with_an_oidc_token(deployment: Deployment) -> None:
    tick = deployment.one(SCHEDULER, name="llmq-reconcile-tick").inputs
    url = deployment.function_url("reconcile")
    assert tick["schedule"] == "*/5 * * * *"
    target = tick["httpTarget"]
    assert (target["uri"], target["httpMethod"]) == (url, "POST")
    assert target["oidcToken"] == {"serviceAccountEmail": f"llmq-sched-rec@{PROJECT}.iam.gserviceaccount.com",
                                   "audience": url}
    assert deployment.roles_of(deployment.account("llmq-sched-rec")) == {("cloudrunv2", "roles/run.invoker")}
    invoker = [r for r in deployment.of("gcp:cloudrunv2/serviceIamMember:ServiceIamMember")
               if r.inputs["member"] == deployment.account("llmq-sched-rec")]
    assert [r.inputs["name"] for r in invoker] == ["llmq-reconcile"]


def test_api_is_not_public_unless_configured(deployment: Deployment) -> None:
    members = {r.inputs["member"] for r in deployment.grants()}
    assert "allUsers" not in members and "allAuthenticatedUsers" not in members


# --- the nightly batch ------------------------------------------------------------------------

def test_batch_job_runs_the_batch_entry_point_on_an_l4(deployment: Deployment) -> None:
    job = deployment.one(JOB).inputs
    template = job["template"]["template"]
    (container,) = template["containers"]
    assert container["commands"] == ["python", "-m", "runner.batch"]
    assert container["image"] == runner(deployment).inputs["template"]["containers"][0]["image"]
    assert template["nodeSelector"] == {"accelerator": "nvidia-l4"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert seconds(template["timeout"]) <= 3600
    assert template["maxRetries"] >= 1
    assert template["volumes"][0]["gcs"]["bucket"] == f"{PROJECT}-llmq-models"
    assert env_of(container)["LLMQ_BATCH_BUCKET"] == f"{PROJECT}-llmq-batch"


def test_scheduler_starts_the_workflow_with_an_identity_that_may_only_do_that(deployment: Deployment) -> None:
    workflow = deployment.one("gcp:workflows/workflow:Workflow").inputs
    nightly = deployment.one(SCHEDULER, name="llmq-nightly-batch").inputs
    target = nightly["httpTarget"]
    workflow_id = f"projects/{PROJECT}/locations/{REGION}/workflows/{workflow['name']}"
    assert target["uri"] == f"https://workflowexecutions.googleapis.com/v1/{workflow_id}/executions"
    assert target["httpMethod"] == "POST"
    assert target["oauthToken"]["serviceAccountEmail"] == f"llmq-sched-batch@{PROJECT}.iam.gserviceaccount.com"
    assert "oidcToken" not in target  # Google APIs take OAuth access tokens
    body = json.loads(base64.b64decode(target["body"]))
    assert json.loads(body["argument"])["batch_bucket"] == f"{PROJECT}-llmq-batch"
    assert deployment.roles_of(deployment.account("llmq-sched-batch")) == {("projects", "roles/workflows.invoker")}
    assert len(nightly["schedule"].split()) == 5


def test_workflow_calls_the_api_and_writes_no_firestore(deployment: Deployment) -> None:
    workflow = deployment.one("gcp:workflows/workflow:Workflow").inputs
    account = deployment.account("llmq-workflow")
    assert workflow["serviceAccount"] == f"llmq-workflow@{PROJECT}.iam.gserviceaccount.com"
    definition = yaml.safe_load(workflow["sourceContents"])
    assert definition == yaml.safe_load((REPO / "workflows" / "nightly_batch.yaml").read_text())
    env = workflow["userEnvVars"]
    assert env["LLMQ_BATCH_BUCKET"] == BATCH_BUCKET
    assert env["LLMQ_SUBMIT_URL"].startswith("https://") and env["LLMQ_STATUS_URL"].startswith("https://")
    assert "LLMQ_API_KEY" not in env and "LLMQ_STORAGE_URL" not in env  # production: OIDC, OAuth2, real GCS
    # api_key mode (the default) on an API that is not public (the default): the workflow's ID tokens are for
    # the functions' URLs, Cloud Run IAM checks them, and this one identity acts as the tenant "nightly".
    for function in ("submit", "status"):
        _, settings = api_settings_of(deployment, function)
        assert settings.token_tenants == {workflow["serviceAccount"]: "nightly"}
        assert settings.token_checked_by == "cloud_run" and settings.token_audience == env["LLMQ_API_AUDIENCE"] == ""
    # ...and only that tenant may ask for batches of inbox/ objects.
    assert api_settings_of(deployment, "submit")[1].nightly_tenants == ["nightly"]

    # It may invoke the two API functions (OIDC through Cloud Run IAM), move batch files, write logs;
    # no Firestore role, and the GPU job is run by the API, not by the workflow.
    roles = {role for _scope, role in deployment.roles_of(account)}
    assert roles == {"roles/run.invoker", "roles/storage.objectUser", "roles/logging.logWriter"}
    assert {g.inputs["member"] for g in deployment.of(JOB_GRANT)} == {deployment.account("llmq-submit")}
    assert not [g for g in deployment.grants() if g.inputs["role"] == "roles/run.developer"]


def test_on_a_public_api_the_functions_check_the_workflows_tokens_for_their_own_audience(infra: None) -> None:
    d = deploy({**CONFIG, "llmq:apiInvokers": json.dumps(["allUsers"])})
    env = d.one("gcp:workflows/workflow:Workflow").inputs["userEnvVars"]
    for function in ("submit", "status"):
        _, settings = api_settings_of(d, function)
        assert settings.token_checked_by == "function"  # nobody else checks them on a public endpoint
        assert settings.token_audience == env["LLMQ_API_AUDIENCE"] == "llmq-api"


# --- identities -------------------------------------------------------------------------------

def test_no_primitive_roles_and_no_authoritative_bindings(deployment: Deployment) -> None:
    grants = deployment.grants()
    assert grants
    assert not [r.name for r in grants if r.inputs["role"] in PRIMITIVE_ROLES]
    # *IAMBinding / *IAMPolicy replace a role's or resource's members: never used here.
    assert not [r.typ for r in deployment.resources if "iambinding" in r.typ.lower() or "iampolicy" in r.typ.lower()]


def test_one_service_account_per_component(deployment: Deployment) -> None:
    accounts = [a.inputs["accountId"] for a in deployment.of(ACCOUNT)]
    assert len(accounts) == len(set(accounts))
    assert set(accounts) == {f"llmq-{s}" for s in (
        "submit", "status", "completions", "files", "webhooks", "wh-push", "deadletter", "reconcile", "build", "push",
        "dl-push", "sched-rec", "batch", "workflow", "sched-batch", "run-qwen2-5-7b")}
    runtime = {
        runner(deployment).inputs["template"]["serviceAccount"],
        deployment.one(JOB).inputs["template"]["template"]["serviceAccount"],
        *(deployment.function(n).inputs["serviceConfig"]["serviceAccountEmail"] for n in FUNCTIONS),
    }
    assert len(runtime) == 9  # no two deployables share an identity
    assert deployment.roles_of(deployment.account("llmq-status")) == {("projects", "roles/datastore.viewer")}
    assert {role for _, role in deployment.roles_of(deployment.account("llmq-submit"))} == {
        "roles/datastore.user", "roles/pubsub.publisher", "roles/run.jobsExecutorWithOverrides",
        "roles/storage.objectViewer", "roles/storage.objectUser", "roles/cloudtrace.agent"}


def test_firestore_roles_are_limited_to_the_database(deployment: Deployment) -> None:
    firestore = [r for r in deployment.grants() if r.inputs["role"].startswith("roles/datastore.")]
    assert firestore
    for grant in firestore:
        assert grant.inputs["condition"]["expression"] == f'resource.name == "projects/{PROJECT}/databases/(default)"'


# --- APIs, observability, outputs ---------------------------------------------------------------

def test_every_api_used_is_enabled_and_left_on_at_destroy(deployment: Deployment) -> None:
    services = {r.inputs["service"]: r.inputs for r in deployment.of("gcp:projects/service:Service")}
    assert {"run.googleapis.com", "cloudfunctions.googleapis.com", "cloudbuild.googleapis.com",
            "artifactregistry.googleapis.com", "pubsub.googleapis.com", "firestore.googleapis.com",
            "storage.googleapis.com", "workflows.googleapis.com", "workflowexecutions.googleapis.com",
            "cloudscheduler.googleapis.com", "monitoring.googleapis.com", "iam.googleapis.com"} <= set(services)
    assert all(s["disableOnDestroy"] is False for s in services.values())


def test_alerts_and_dashboard(deployment: Deployment) -> None:
    policies = {p.inputs["displayName"]: p.inputs["conditions"][0]["conditionThreshold"]
                for p in deployment.of("gcp:monitoring/alertPolicy:AlertPolicy")}
    assert len(policies) == 5
    filters = " ".join(c["filter"] for c in policies.values())
    assert 'subscription/num_undelivered_messages" AND resource.label.subscription_id = ' \
           'one_of("llmq-jobs-dead-letter-inspect")' in filters
    assert 'oldest_unacked_message_age" AND resource.label.subscription_id = one_of("llmq-jobs-qwen2-5-7b")' \
        in filters
    assert 'response_code_class = "5xx"' in filters
    ratio = [c for c in policies.values() if "denominatorFilter" in c and "run.googleapis.com" in c["filter"]]
    assert len(ratio) == 1 and 'service_name = one_of("llmq-runner-qwen2-5-7b")' in ratio[0]["denominatorFilter"]
    dashboard = json.loads(deployment.one("gcp:monitoring/dashboard:Dashboard").inputs["dashboardJson"])
    text = json.dumps(dashboard)
    for metric in ("subscription/num_undelivered_messages", "run.googleapis.com/request_latencies",
                   "run.googleapis.com/container/instance_count"):
        assert metric in text, metric


def test_traces_go_to_cloud_trace_from_every_process_that_makes_spans(deployment: Deployment) -> None:
    assert "cloudtrace.googleapis.com" in {r.inputs["service"] for r in deployment.of("gcp:projects/service:Service")}
    runner_env = env_of(runner(deployment).inputs["template"]["containers"][0])
    assert runner_env["LLMQ_TRACE_EXPORTER"] == "gcp"
    for name in ("submit", "completions"):
        _, settings = api_settings_of(deployment, name)
        assert settings.trace_exporter == "gcp", name
    trace_writers = {g.inputs["member"] for g in deployment.of("gcp:projects/iAMMember:IAMMember")
                     if g.inputs["role"] == "roles/cloudtrace.agent"}
    runner_member = "serviceAccount:" + runner(deployment).inputs["template"]["serviceAccount"]
    assert trace_writers == {deployment.account(f"llmq-{n}") for n in ("submit", "completions", "deadletter",
                                                                       "reconcile", "batch")} | {runner_member}
    assert env_of(deployment.one(JOB).inputs["template"]["template"]["containers"][0])["LLMQ_TRACE_EXPORTER"] == "gcp"


def test_runner_metrics_reach_managed_prometheus_through_its_sidecar(deployment: Deployment) -> None:
    template = runner(deployment).inputs["template"]
    container, sidecar = template["containers"]
    assert container["ports"]["containerPort"] == 8080  # the sidecar's default scrape target: :8080/metrics
    assert "cloud-run-gmp-sidecar" in sidecar["image"] and sidecar["dependsOns"] == [container["name"]]
    assert "ports" not in sidecar or not sidecar["ports"]  # only the runner receives requests
    writers = {g.inputs["member"] for g in deployment.of("gcp:projects/iAMMember:IAMMember")
               if g.inputs["role"] == "roles/monitoring.metricWriter"}
    assert writers == {"serviceAccount:" + template["serviceAccount"]}


def test_submissions_are_counted_by_outcome_from_their_log_line(deployment: Deployment) -> None:
    metric = deployment.one("gcp:logging/metric:Metric").inputs
    assert metric["name"] == "llmq_submissions"
    assert 'jsonPayload.message = "submission"' in metric["filter"]
    assert metric["labelExtractors"] == {"outcome": "EXTRACT(jsonPayload.outcome)"}
    assert metric["metricDescriptor"]["metricKind"] == "DELTA"
    policies = {p.inputs["displayName"]: p.inputs["conditions"][0]["conditionThreshold"]
                for p in deployment.of("gcp:monitoring/alertPolicy:AlertPolicy")}
    errors = policies["llmq: submissions fail on the platform's side"]
    assert "logging.googleapis.com/user/llmq_submissions" in errors["denominatorFilter"]
    assert 'metric.label.outcome = one_of("unavailable", "overloaded", "internal")' in errors["filter"]
    failures = policies["llmq: jobs end failed"]
    assert 'prometheus.googleapis.com/llmq_jobs_finished_total/counter' in failures["denominatorFilter"]
    assert 'metric.label.outcome = "failed"' in failures["filter"]
    text = deployment.one("gcp:monitoring/dashboard:Dashboard").inputs["dashboardJson"]
    for shown in ("llmq_submissions", "llmq_inflight/gauge", "llmq_engine_waiting/gauge",
                  "llmq_time_to_first_token_seconds/histogram", "llmq_job_latency_seconds/histogram",
                  "subscription/dead_letter_message_count", "subscription/oldest_unacked_message_age",
                  "container/instance_count"):
        assert shown in text, shown


def test_artifact_registry_repository_for_the_image(deployment: Deployment) -> None:
    repo = deployment.one("gcp:artifactregistry/repository:Repository").inputs
    assert (repo["format"], repo["repositoryId"], repo["location"]) == ("DOCKER", "llmq", REGION)
    assert runner(deployment).inputs["template"]["containers"][0]["image"] == IMAGE


def test_without_an_image_everything_but_the_gpu_parts_is_deployed(infra: None) -> None:
    """Bootstrap: the first `pulumi up` creates the repository the image is pushed to."""
    d = deploy({"gcp:project": PROJECT})
    assert not d.of(SERVICE) and not d.of(JOB) and not d.of("gcp:workflows/workflow:Workflow")
    assert d.one("gcp:artifactregistry/repository:Repository").inputs["repositoryId"] == "llmq"
    assert {f.inputs["name"] for f in d.of(FUNCTION)} == {f"llmq-{n}" for n in FUNCTIONS}
    assert {s.inputs["topic"] for s in d.of(SUBSCRIPTION)} == {
        "llmq-jobs-dead-letter", "llmq-webhook-deliveries", "llmq-webhook-deliveries-dead-letter"}
    assert sorted(p.inputs["displayName"] for p in d.of("gcp:monitoring/alertPolicy:AlertPolicy")) == [
        "llmq: jobs were dead-lettered", "llmq: submissions fail on the platform's side"]
    assert "runner_url" not in d.exports and d.exports["image"] == "(not built yet)"
    # submit already names the job (created by the next run: a batch launched before it gets 503) and
    # holds its bucket grants; the job grant comes with the job.
    _, submit = api_settings_of(d, "submit")
    assert (submit.batch_job, submit.batch_bucket) == ("llmq-batch", BATCH_BUCKET)
    assert not d.of(JOB_GRANT)
    assert {g.inputs["role"] for g in d.of(BUCKET_GRANT)
            if g.inputs["member"] == d.account("llmq-submit")} == {"roles/storage.objectViewer",
                                                                  "roles/storage.objectUser"}


@pulumi.runtime.test
def test_stack_outputs(deployment: Deployment) -> pulumi.Output[None]:
    exports = deployment.exports
    assert {"submit_url", "status_url", "runner_url", "results_bucket", "batch_bucket", "models_bucket",
            "jobs_topic", "dead_letter_topic"} <= set(exports)

    def check(values: list[Any]) -> None:
        submit_url, status_url, runner_url, results, topic, dead_letter = values
        assert submit_url == deployment.function_url("submit")
        assert status_url == deployment.function_url("status")
        assert runner_url == runner(deployment).outputs["uri"]
        assert results == f"{PROJECT}-llmq-results"
        assert (topic, dead_letter) == ("llmq-jobs", "llmq-jobs-dead-letter")

    return pulumi.Output.all(exports["submit_url"], exports["status_url"], exports["runner_url"],
                             exports["results_bucket"], exports["jobs_topic"], exports["dead_letter_topic"]).apply(check)


@pulumi.runtime.test
def test_component_outputs_tie_the_time_budget_together(deployment: Deployment) -> pulumi.Output[None]:
    queue, runners = deployment.program["queue"], deployment.program["runners"]
    (sub,) = queue.subscriptions.values()

    def check(values: list[Any]) -> None:
        ack, timeout = values
        assert runners[0].generation_timeout_seconds + 30 <= ack <= runners[0].request_timeout_seconds
        assert seconds(timeout) == runners[0].request_timeout_seconds

    timeout = runners[0].service.template.apply(lambda template: template.timeout)
    return pulumi.Output.all(sub.ack_deadline_seconds, timeout).apply(check)


# --- settings checks (no deployment) ----------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"ack_deadline_seconds": 700}, "ack_deadline_seconds"),
    ({"generation_timeout_seconds": 590}, "generation_timeout_seconds"),
    ({"runner_timeout_seconds": 500}, "runner_timeout_seconds"),
    ({"lease_seconds": 600}, "lease_seconds"),
    ({"region": "us-west1"}, "no NVIDIA L4"),
    ({"runner_cpu": 2}, "runner_cpu"),
    ({"runner_memory_gib": 8}, "runner_memory_gib"),
    ({"max_delivery_attempts": 4}, "max_delivery_attempts"),
    ({"max_inflight": 8}, "max_inflight"),
    ({"api_invokers": ("everyone",)}, "api_invokers"),
    ({"api_auth_mode": "oauth"}, "api_auth_mode"),
    ({"api_auth_mode": "iam", "api_invokers": ("allUsers",)}, "must not include allUsers"),
    ({"quota_queued_jobs": -1}, "quota"),
    ({"image": "example.com/runner"}, "tag or digest"),
    ({"model_aliases": {"gpt-4o-mini": "not-a-model"}}, "modelAliases"),
    ({"model_aliases": {"qwen2.5-7b-instruct": "qwen2.5-7b-instruct"}}, "already a model"),
])
def test_settings_reject_inconsistent_values(infra: None, change: dict[str, Any], message: str) -> None:
    from llmq_infra.config import ConfigError, Settings

    base = Settings(project=PROJECT)
    with pytest.raises(ConfigError, match=message):
        replace(base, **change)


def test_settings_defaults_and_model_checks(infra: None) -> None:
    from llmq_infra.config import ConfigError, Model, Settings

    settings = Settings(project=PROJECT)
    assert (settings.ack_deadline_seconds, settings.generation_timeout_seconds, settings.runner_timeout_seconds) == (
        600, 540, 660)
    assert settings.firestore_location == REGION
    short = Settings(project=PROJECT, ack_deadline_seconds=120)  # the local stack's budget
    assert (short.generation_timeout_seconds, short.lease_seconds, short.runner_timeout_seconds) == (60, 30, 180)
    with pytest.raises(ConfigError, match="unique"):
        Settings(project=PROJECT, models=(Model(id="a-model", path="a"), Model(id="a-model", path="b")))
    with pytest.raises(ConfigError, match="max_tokens"):
        Model(id="m1", path="m1", max_model_len=512, max_tokens=512)
    with pytest.raises(ConfigError, match="path"):
        Model(id="m1", path="../elsewhere")


def example_config() -> dict[str, str]:
    """Pulumi.example.yaml as the engine hands config to the program (structured values as JSON)."""
    raw = yaml.safe_load((REPO / "Pulumi.example.yaml").read_text())["config"]
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in raw.items()}


def test_example_stack_file_documents_only_keys_the_program_reads(infra: None) -> None:
    source = (PROGRAM / "llmq_infra" / "config.py").read_text()
    read = set(re.findall(r'cfg\.get(?:_int|_bool|_float|_object)?\("([A-Za-z]+)"\)', source))
    documented = {key.split(":", 1)[1] for key in example_config() if key.startswith("llmq:")}
    assert documented == read - {"project"}  # the example sets gcp:project, the fallback


def test_example_stack_file_deploys(infra: None) -> None:
    config = example_config()
    d = deploy(config)
    assert runner(d).inputs["template"]["containers"][0]["image"] == config["llmq:image"]
    assert runner(d).inputs["name"] == "llmq-runner-qwen2-5-7b"


# --- one URL ----------------------------------------------------------------------------------

def test_a_public_api_gets_one_gateway_routed_by_the_api_document(infra: None) -> None:
    d = deploy({**CONFIG, "llmq:apiInvokers": json.dumps(["allUsers"])})
    gateway = d.one("gcp:apigateway/gateway:Gateway")
    assert gateway.inputs["gatewayId"] == "llmq-api"
    config = d.one("gcp:apigateway/apiConfig:ApiConfig")
    contents = config.inputs["openapiDocuments"][0]["document"]["contents"]
    document = yaml.safe_load(base64.b64decode(contents))
    backends = {(method, path): operation["x-google-backend"] for path, item in document["paths"].items()
                for method, operation in item.items()}
    assert backends[("post", "/v1/jobs")]["address"] == d.function_url("submit")
    assert backends[("get", "/v1/jobs/{id}")]["address"] == d.function_url("status")
    assert all(b["disable_auth"] and b["path_translation"] == "APPEND_PATH_TO_ADDRESS" for b in backends.values())
    assert "api_url" in d.exports


def test_without_public_functions_there_is_no_gateway_to_pass_credentials_through(deployment: Deployment) -> None:
    assert not deployment.of("gcp:apigateway/gateway:Gateway")
    assert "api_url" not in deployment.exports


def test_webhooks_are_pushed_to_a_private_function_that_gives_up_into_a_dead_letter_topic(
        deployment: Deployment) -> None:
    function = deployment.function("webhooks")
    assert function.inputs["serviceConfig"]["ingressSettings"] == "ALLOW_INTERNAL_ONLY"
    subscriptions = {s.inputs["topic"]: s.inputs for s in deployment.of(SUBSCRIPTION)}
    deliveries = subscriptions["llmq-webhook-deliveries"]
    assert deliveries["deadLetterPolicy"]["deadLetterTopic"].endswith("llmq-webhook-deliveries-dead-letter")
    assert deliveries["deadLetterPolicy"]["maxDeliveryAttempts"] == 12
    assert deliveries["retryPolicy"] == {"minimumBackoff": "10s", "maximumBackoff": "600s"}
    assert deliveries["pushConfig"]["oidcToken"]["serviceAccountEmail"].startswith("llmq-wh-push@")
    given_up = subscriptions["llmq-webhook-deliveries-dead-letter"]
    assert given_up["pushConfig"]["pushEndpoint"].endswith("/given-up")
    # Exactly the identities that end jobs or batches may publish events.
    publishers = {g.inputs["member"] for g in deployment.of("gcp:pubsub/topicIAMMember:TopicIAMMember")
                  if g.inputs["topic"] == "llmq-webhook-deliveries"}
    assert {m.split(":")[1].split("@")[0] for m in publishers} == {
        "llmq-submit", "llmq-completions", "llmq-deadletter", "llmq-reconcile", "llmq-run-qwen2-5-7b", "llmq-batch"}
    runner_env = {e["name"]: e["value"] for e in runner(deployment).inputs["template"]["containers"][0]["envs"]}
    assert runner_env["LLMQ_WEBHOOK_TOPIC"] == "llmq-webhook-deliveries"
