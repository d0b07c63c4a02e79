"""The jobs topic and the dead-letter topic, and the Pub/Sub service agent that moves messages
between them (its publisher role on the dead-letter topic; its subscriber role on each source
subscription is granted in queue.py, where the subscriptions are)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi_gcp as gcp

import pulumi
from llmq_infra.common import child_options


@dataclass
class TopicsArgs:
    project: pulumi.Input[str]
    jobs_topic: str
    dead_letter_topic: str
    labels: dict[str, str] = field(default_factory=dict)


class Topics(pulumi.ComponentResource):
    jobs: gcp.pubsub.Topic
    dead_letter: gcp.pubsub.Topic
    pubsub_agent_member: pulumi.Output[str]  # serviceAccount:service-<number>@gcp-sa-pubsub.iam.gserviceaccount.com

    def __init__(self, name: str, args: TopicsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.jobs_topic == args.dead_letter_topic:
            raise ValueError("Topics: the dead-letter topic must differ from the jobs topic")
        super().__init__("llmq:infra:Topics", name, None, opts)
        self.jobs = gcp.pubsub.Topic(f"{name}-jobs", project=args.project, name=args.jobs_topic,
                                     labels=args.labels, opts=child_options(self, opts))
        self.dead_letter = gcp.pubsub.Topic(f"{name}-dead-letter", project=args.project,
                                            name=args.dead_letter_topic, labels=args.labels,
                                            opts=child_options(self, opts))
        # The agent exists once the API is on, but not always before its first use: asking for its
        # identity creates it, so the bindings below never name a missing principal.
        agent = gcp.projects.ServiceIdentity(f"{name}-pubsub-agent", project=args.project,
                                             service="pubsub.googleapis.com", opts=child_options(self, opts))
        self.pubsub_agent_member = agent.email.apply(lambda email: f"serviceAccount:{email}")
        # Without it dead-lettering fails silently: messages keep being redelivered forever.
        self.dead_letter_publisher = gcp.pubsub.TopicIAMMember(
            f"{name}-dead-letter-agent-publisher",
            project=args.project,
            topic=self.dead_letter.name,
            role="roles/pubsub.publisher",
            member=self.pubsub_agent_member,
            opts=child_options(self, opts),
        )
        self.register_outputs({
            "jobs_topic": self.jobs.name,
            "dead_letter_topic": self.dead_letter.name,
            "pubsub_agent_member": self.pubsub_agent_member,
        })
