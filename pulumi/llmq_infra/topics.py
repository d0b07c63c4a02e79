"""The jobs topic and the dead-letter topic, and the Pub/Sub service agent that moves messages
between them (its publisher role on the dead-letter topic; its subscriber role on each source
subscription is granted in queue.py, where the subscriptions are)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi_gcp as gcp

import pulumi
from jobs.constants import BATCH_TOPIC_SUFFIX
from llmq_infra.common import child_options


@dataclass
class TopicsArgs:
    project: pulumi.Input[str]
    jobs_topic: str
    dead_letter_topic: str
    batch_jobs_topic: str = ""  # `priority: "batch"` jobs; default: "<jobs_topic>-batch"
    labels: dict[str, str] = field(default_factory=dict)


class Topics(pulumi.ComponentResource):
    jobs: gcp.pubsub.Topic
    batch_jobs: gcp.pubsub.Topic  # their own topic, so their backlog never delays an interactive job
    dead_letter: gcp.pubsub.Topic
    pubsub_agent_member: pulumi.Output[str]  # serviceAccount:service-<number>@gcp-sa-pubsub.iam.gserviceaccount.com

    def __init__(self, name: str, args: TopicsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        batch_jobs_topic = args.batch_jobs_topic or f"{args.jobs_topic}{BATCH_TOPIC_SUFFIX}"
        if len({args.jobs_topic, batch_jobs_topic, args.dead_letter_topic}) != 3:
            raise ValueError("Topics: the jobs, batch jobs and dead-letter topics must differ")
        super().__init__("llmq:infra:Topics", name, None, opts)
        self.jobs = gcp.pubsub.Topic(f"{name}-jobs", project=args.project, name=args.jobs_topic,
                                     labels=args.labels, opts=child_options(self, opts))
        self.batch_jobs = gcp.pubsub.Topic(f"{name}-batch-jobs", project=args.project, name=batch_jobs_topic,
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
            "batch_jobs_topic": self.batch_jobs.name,
            "dead_letter_topic": self.dead_letter.name,
            "pubsub_agent_member": self.pubsub_agent_member,
        })
