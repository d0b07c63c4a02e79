"""Webhooks (jobs/webhooks.py): the deliveries topic (one message per event and endpoint), the private CPU
function that signs and sends each one, its push subscription (Pub/Sub's retry policy backs off between
attempts) and dead-letter topic (whose push records a delivery as given up), and who may publish events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi_gcp as gcp

import pulumi
from llmq_infra.common import child_options, duration, firestore_condition
from llmq_infra.function import HttpFunction, HttpFunctionArgs
from llmq_infra.queue import NEVER_EXPIRE

GIVEN_UP_PATH = "/given-up"  # functions/webhooks/main.py
DELIVERY_ACK_SECONDS = 60  # a send times out at 10 s; Firestore writes around it


@dataclass
class WebhooksArgs:
    project: str
    region: str
    database: str
    function_name: str
    account_id: str
    push_account_id: str
    topic: str  # the deliveries topic's name (LLMQ_WEBHOOK_TOPIC of every deployable that ends jobs)
    dead_letter_topic: str
    pubsub_agent_member: pulumi.Input[str]
    # Every identity that ends jobs or batches and so announces their events.
    publishers: Sequence[tuple[str, pulumi.Input[str]]]
    sources_bucket: pulumi.Input[str]
    build_service_account: pulumi.Input[str]
    docker_repository: pulumi.Input[str]
    max_delivery_attempts: int = 12
    min_backoff_seconds: int = 10
    max_backoff_seconds: int = 600
    internal_ingress: bool = True
    labels: dict[str, str] = field(default_factory=dict)


class Webhooks(pulumi.ComponentResource):
    topic: gcp.pubsub.Topic
    function: HttpFunction
    subscription: gcp.pubsub.Subscription
    given_up_subscription: gcp.pubsub.Subscription

    def __init__(self, name: str, args: WebhooksArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not 5 <= args.max_delivery_attempts <= 100:
            raise ValueError("Webhooks: max_delivery_attempts must be 5..100")
        if not 0 <= args.min_backoff_seconds <= args.max_backoff_seconds <= 600:
            raise ValueError("Webhooks: backoff must be 0 <= min <= max <= 600")
        super().__init__("llmq:infra:Webhooks", name, None, opts)
        child = child_options(self, opts)
        self.topic = gcp.pubsub.Topic(f"{name}-topic", project=args.project, name=args.topic, labels=args.labels,
                                      opts=child)
        dead = gcp.pubsub.Topic(f"{name}-dead-letter", project=args.project, name=args.dead_letter_topic,
                                labels=args.labels, opts=child)
        self.function = HttpFunction(f"{name}-function", HttpFunctionArgs(
            function_name=args.function_name, source="webhooks", entry_point="webhooks",
            account_id=args.account_id, env={"LLMQ_PROJECT": args.project, "LLMQ_DATABASE": args.database},
            max_instances=10, concurrency=40, timeout_seconds=DELIVERY_ACK_SECONDS,
            project=args.project, region=args.region, sources_bucket=args.sources_bucket,
            build_service_account=args.build_service_account, docker_repository=args.docker_repository,
            ingress="ALLOW_INTERNAL_ONLY" if args.internal_ingress else "ALLOW_ALL", labels=args.labels,
            description="llmq: signs and sends webhook events (push endpoint of the deliveries topic)"), opts=child)
        # It reads endpoints and records each attempt on the job's or batch's document; nothing else.
        gcp.projects.IAMMember(f"{name}-firestore", project=args.project, role="roles/datastore.user",
                               member=self.function.service_account.member,
                               condition=firestore_condition(args.project, args.database), opts=child)
        push = gcp.serviceaccount.Account(f"{name}-push-sa", project=args.project, account_id=args.push_account_id,
                                          display_name="llmq Pub/Sub push to the webhooks function", opts=child)
        gcp.serviceaccount.IAMMember(f"{name}-push-token-creator", service_account_id=push.name,
                                     role="roles/iam.serviceAccountTokenCreator", member=args.pubsub_agent_member,
                                     opts=child)
        invoker = gcp.cloudrunv2.ServiceIamMember(
            f"{name}-invoker", project=args.project, location=args.region, name=self.function.service_name,
            role="roles/run.invoker", member=push.member, opts=child)
        after_invoker = child_options(self, opts, depends_on=[invoker])
        retry = gcp.pubsub.SubscriptionRetryPolicyArgs(minimum_backoff=duration(args.min_backoff_seconds),
                                                       maximum_backoff=duration(args.max_backoff_seconds))
        common: dict[str, Any] = {"project": args.project, "labels": args.labels,
                                  "ack_deadline_seconds": DELIVERY_ACK_SECONDS, "retry_policy": retry,
                                  "expiration_policy": gcp.pubsub.SubscriptionExpirationPolicyArgs(ttl=NEVER_EXPIRE)}
        self.subscription = gcp.pubsub.Subscription(
            f"{name}-deliveries", name=f"{args.topic}-push", topic=self.topic.name,
            push_config=self._push(self.function.url, push),
            dead_letter_policy=gcp.pubsub.SubscriptionDeadLetterPolicyArgs(
                dead_letter_topic=dead.id, max_delivery_attempts=args.max_delivery_attempts),
            opts=after_invoker, **common)
        self.given_up_subscription = gcp.pubsub.Subscription(
            f"{name}-given-up", name=f"{args.dead_letter_topic}-push", topic=dead.name,
            push_config=self._push(pulumi.Output.concat(self.function.url, GIVEN_UP_PATH), push, self.function.url),
            opts=after_invoker, **common)
        # The service agent forwards exhausted deliveries to the dead-letter topic (silently not, without these).
        gcp.pubsub.TopicIAMMember(f"{name}-agent-publisher", project=args.project, topic=dead.name,
                                  role="roles/pubsub.publisher", member=args.pubsub_agent_member, opts=child)
        gcp.pubsub.SubscriptionIAMMember(f"{name}-agent-subscriber", project=args.project,
                                         subscription=self.subscription.name, role="roles/pubsub.subscriber",
                                         member=args.pubsub_agent_member, opts=child)
        for key, member in args.publishers:
            gcp.pubsub.TopicIAMMember(f"{name}-{key}-publisher", project=args.project, topic=self.topic.name,
                                      role="roles/pubsub.publisher", member=member, opts=child)
        self.register_outputs({"topic": self.topic.name, "function_url": self.function.url,
                               "subscription": self.subscription.name})

    @staticmethod
    def _push(endpoint: pulumi.Input[str], account: gcp.serviceaccount.Account,
              audience: pulumi.Input[str] | None = None) -> gcp.pubsub.SubscriptionPushConfigArgs:
        return gcp.pubsub.SubscriptionPushConfigArgs(
            push_endpoint=endpoint,
            oidc_token=gcp.pubsub.SubscriptionPushConfigOidcTokenArgs(
                service_account_email=account.email, audience=audience or endpoint))
