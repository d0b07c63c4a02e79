"""The platform's infrastructure. So far: the queue and the store the local stack emulates.
The functions, the GPU runner, the nightly batch and observability follow (see the issues)."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

config = pulumi.Config()
region = config.get("region") or "us-central1"
results_retention_days = config.get_int("resultsRetentionDays") or 30

dead_letter_topic = gcp.pubsub.Topic("jobs-dead-letter", name="jobs-dead-letter")
jobs_topic = gcp.pubsub.Topic("jobs", name="jobs")

results_bucket = gcp.storage.Bucket(
    "results",
    location=region,
    uniform_bucket_level_access=True,
    public_access_prevention="enforced",
    lifecycle_rules=[gcp.storage.BucketLifecycleRuleArgs(
        action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
        condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=results_retention_days),
    )],
)

# Jobs expire through a TTL policy on expire_at; the field is exempt from indexing (a monotonically
# increasing indexed field caps a collection at ~500 writes/s).
jobs_ttl = gcp.firestore.Field(
    "jobs-expire-at",
    collection="jobs",
    field="expire_at",
    ttl_config=gcp.firestore.FieldTtlConfigArgs(),
    index_config=gcp.firestore.FieldIndexConfigArgs(),
)

pulumi.export("jobs_topic", jobs_topic.name)
pulumi.export("dead_letter_topic", dead_letter_topic.name)
pulumi.export("results_bucket", results_bucket.name)
