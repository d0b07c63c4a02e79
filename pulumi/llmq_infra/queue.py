"""Delivery: the push subscription of each runner (filtered on the `model` attribute when several
models are deployed), retries and dead-lettering, the dead-letter subscription that pushes to the
CPU dead-letter function, and a pull subscription that keeps dead letters for inspection.

Each push endpoint is called with an OIDC token of an invoker identity that may invoke that
endpoint and nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi_gcp as gcp

import pulumi
from llmq_infra.common import child_options, duration

PUSH_PATH = "/push"  # the runner's push route (runner/app.py)
NEVER_EXPIRE = ""  # subscriptions of an idle deployment must not expire after 31 days
DEAD_LETTER_ACK_SECONDS = 60
INSPECTION_RETENTION = "604800s"  # 7 days


@dataclass
class PushTarget:
    """One runner service and the subscription that feeds it."""

    model_id: str
    subscription_name: str
    url: pulumi.Input[str]
    service_name: pulumi.Input[str]


@dataclass
class QueueArgs:
    project: str
    region: str
    jobs_topic: pulumi.Input[str]
    batch_jobs_topic: pulumi.Input[str]  # `priority: "batch"` jobs, a subscription of their own per runner
    dead_letter_topic: pulumi.Input[str]  # name
    dead_letter_topic_id: pulumi.Input[str]  # projects/P/topics/T
    pubsub_agent_member: pulumi.Input[str]
    runners: Sequence[PushTarget]
    push_account_id: str
    dead_letter_push_account_id: str
    deadletter_url: pulumi.Input[str]
    deadletter_service_name: pulumi.Input[str]
    dead_letter_subscription: str
    inspection_subscription: str
    ack_deadline_seconds: int
    max_delivery_attempts: int
    min_backoff_seconds: int
    max_backoff_seconds: int
    labels: dict[str, str] = field(default_factory=dict)


def model_filter(model_id: str) -> str:
    """The subscription filter for one model's jobs (the publisher sets the `model` attribute)."""
    return f'attributes.model = "{model_id}"'


class Queue(pulumi.ComponentResource):
    subscriptions: dict[str, gcp.pubsub.Subscription]  # model id → push subscription (interactive jobs)
    batch_subscriptions: dict[str, gcp.pubsub.Subscription]  # model id → push subscription (batch jobs)
    dead_letter_subscription: gcp.pubsub.Subscription
    inspection_subscription: gcp.pubsub.Subscription
    push_service_account: gcp.serviceaccount.Account
    ack_deadline_seconds: int

    def __init__(self, name: str, args: QueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        # No runners yet (the image is not built): the dead-letter side is deployed alone, and jobs
        # wait in Firestore until the reconciler republishes them to the runners' subscriptions.
        if len({r.model_id for r in args.runners}) != len(args.runners):
            raise ValueError("Queue: one runner per model")
        if not 10 <= args.ack_deadline_seconds <= 600:
            raise ValueError("Queue: ack_deadline_seconds must be 10..600 (Pub/Sub push)")
        if not 5 <= args.max_delivery_attempts <= 100:
            raise ValueError("Queue: max_delivery_attempts must be 5..100")
        if not 0 <= args.min_backoff_seconds <= args.max_backoff_seconds <= 600:
            raise ValueError("Queue: backoff must be 0 <= min <= max <= 600")
        for model_id in (r.model_id for r in args.runners):
            if len(model_filter(model_id).encode()) > 256:
                raise ValueError(f"Queue: the filter for {model_id!r} exceeds Pub/Sub's 256 bytes")
        super().__init__("llmq:infra:Queue", name, None, opts)
        child = child_options(self, opts)
        self.ack_deadline_seconds = args.ack_deadline_seconds
        retry = gcp.pubsub.SubscriptionRetryPolicyArgs(
            minimum_backoff=duration(args.min_backoff_seconds), maximum_backoff=duration(args.max_backoff_seconds))

        # Identity of the job pushes: may invoke the runners, nothing else.
        self.push_service_account = self._invoker(f"{name}-push", args.push_account_id,
                                                  "llmq Pub/Sub push to the runners", args, child)
        self.subscriptions, self.batch_subscriptions = {}, {}
        for runner in args.runners:
            key = runner.subscription_name
            invoker = gcp.cloudrunv2.ServiceIamMember(
                f"{name}-{key}-invoker", project=args.project, location=args.region, name=runner.service_name,
                role="roles/run.invoker", member=self.push_service_account.member, opts=child)
            # One subscription per priority: batch jobs wait in their own backlog, never ahead of an
            # interactive job (the runner keeps slots for interactive work, the engine runs it first).
            for suffix, topic, into in (("", args.jobs_topic, self.subscriptions),
                                        ("-batch", args.batch_jobs_topic, self.batch_subscriptions)):
                subscription = gcp.pubsub.Subscription(
                    f"{name}-{key}{suffix}",
                    project=args.project,
                    name=f"{runner.subscription_name}{suffix}",
                    topic=topic,
                    labels=args.labels,
                    # The push request's own timeout: the runner's generation budget ends inside it.
                    ack_deadline_seconds=args.ack_deadline_seconds,
                    push_config=gcp.pubsub.SubscriptionPushConfigArgs(
                        push_endpoint=pulumi.Output.concat(runner.url, PUSH_PATH),
                        oidc_token=gcp.pubsub.SubscriptionPushConfigOidcTokenArgs(
                            service_account_email=self.push_service_account.email,
                            audience=runner.url,  # Cloud Run accepts its own URL as the audience
                        ),
                    ),
                    retry_policy=retry,
                    dead_letter_policy=gcp.pubsub.SubscriptionDeadLetterPolicyArgs(
                        dead_letter_topic=args.dead_letter_topic_id,
                        max_delivery_attempts=args.max_delivery_attempts,
                    ),
                    # Filters are immutable; one subscription per model (DESIGN_NOTES).
                    filter=model_filter(runner.model_id) if len(args.runners) > 1 else None,
                    expiration_policy=gcp.pubsub.SubscriptionExpirationPolicyArgs(ttl=NEVER_EXPIRE),
                    opts=child_options(self, opts, depends_on=[invoker]),
                )
                # The service agent acknowledges the message it forwards to the dead-letter topic;
                # without this role dead-lettering fails silently.
                gcp.pubsub.SubscriptionIAMMember(
                    f"{name}-{key}{suffix}-agent-subscriber", project=args.project, subscription=subscription.name,
                    role="roles/pubsub.subscriber", member=args.pubsub_agent_member, opts=child)
                into[runner.model_id] = subscription

        # Dead letters go to a CPU function (never the GPU runner), with their own invoker identity.
        dl_account = self._invoker(f"{name}-dl-push", args.dead_letter_push_account_id,
                                   "llmq Pub/Sub push to the dead-letter function", args, child)
        dl_invoker = gcp.cloudrunv2.ServiceIamMember(
            f"{name}-dead-letter-invoker", project=args.project, location=args.region,
            name=args.deadletter_service_name, role="roles/run.invoker", member=dl_account.member, opts=child)
        self.dead_letter_subscription = gcp.pubsub.Subscription(
            f"{name}-dead-letter-push",
            project=args.project,
            name=args.dead_letter_subscription,
            topic=args.dead_letter_topic,
            labels=args.labels,
            ack_deadline_seconds=DEAD_LETTER_ACK_SECONDS,
            push_config=gcp.pubsub.SubscriptionPushConfigArgs(
                push_endpoint=args.deadletter_url,
                oidc_token=gcp.pubsub.SubscriptionPushConfigOidcTokenArgs(
                    service_account_email=dl_account.email, audience=args.deadletter_url),
            ),
            retry_policy=retry,
            expiration_policy=gcp.pubsub.SubscriptionExpirationPolicyArgs(ttl=NEVER_EXPIRE),
            opts=child_options(self, opts, depends_on=[dl_invoker]),
        )
        # A second, pull subscription keeps every dead letter for a week so an operator can read
        # the failed messages (`gcloud pubsub subscriptions pull`); the alert counts its backlog.
        self.inspection_subscription = gcp.pubsub.Subscription(
            f"{name}-dead-letter-inspect",
            project=args.project,
            name=args.inspection_subscription,
            topic=args.dead_letter_topic,
            labels=args.labels,
            ack_deadline_seconds=DEAD_LETTER_ACK_SECONDS,
            message_retention_duration=INSPECTION_RETENTION,
            expiration_policy=gcp.pubsub.SubscriptionExpirationPolicyArgs(ttl=NEVER_EXPIRE),
            opts=child,
        )
        self.register_outputs({
            "subscriptions": {m: s.name for m, s in self.subscriptions.items()},
            "dead_letter_subscription": self.dead_letter_subscription.name,
            "inspection_subscription": self.inspection_subscription.name,
            "push_service_account": self.push_service_account.email,
        })

    def _invoker(self, name: str, account_id: str, display: str, args: QueueArgs,
                 child: pulumi.ResourceOptions) -> gcp.serviceaccount.Account:
        account = gcp.serviceaccount.Account(f"{name}-sa", project=args.project, account_id=account_id,
                                             display_name=display, opts=child)
        # Pub/Sub mints the OIDC token as this account (projects created before April 2021 need the
        # grant explicitly; later ones have it through the agent's role — granting it here is harmless).
        gcp.serviceaccount.IAMMember(f"{name}-token-creator", service_account_id=account.name,
                                     role="roles/iam.serviceAccountTokenCreator",
                                     member=args.pubsub_agent_member, opts=child)
        return account
