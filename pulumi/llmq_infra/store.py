"""Durable state: the Firestore database with its TTL policies and indexes, and the buckets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi_gcp as gcp

import pulumi
from jobs.constants import BATCHES_COLLECTION, FILES_COLLECTION, FILES_PREFIX, TTL_FIELD
from jobs.constants import JOBS_COLLECTION as JOBS
from jobs.constants import REQUEST_SUBCOLLECTION as REQUEST  # jobs/{id}/request/body (a collection group)
from llmq_infra.common import child_options

# Timestamps on `jobs` no query filters on by themselves. Firestore indexes every field by
# default, and an indexed, ever-increasing value caps a collection at ~500 writes/s (hotspot):
# exempt them. `created_at` and `lease_expires_at` are still in the composite indexes below.
# `output` is rewritten ~1/s while streaming and never queried; `trace_id` is read from the document, never
# searched by (Cloud Trace finds a job's trace by its id).
UNINDEXED_JOB_FIELDS = ("created_at", "started_at", "finished_at", "lease_expires_at", "deadline_at", "output",
                        "trace_id")

# Queries of jobs/adapters/firestore_store.py with an equality and a range filter: the reconciler's
# (status + a time) and the per-tenant submissions-per-minute quota (jobs/quotas.py). `created_at` has
# no single-field index (above), so without these the queries fail. The queued-jobs quota
# (tenant == T AND status == queued) is equalities only: Firestore merges the single-field indexes.
# The reconciler also finds batches nobody works on: batches where status IN [open ones] AND updated_at < T.
# The lists of OpenAI's API (GET /v1/batches, GET /v1/files): the tenant's, ordered by created_at (then id, in
# the same direction, which Firestore adds itself), newest first, or oldest first for files.
_A, _D = "ASCENDING", "DESCENDING"
COMPOSITE_INDEXES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {  # name: (collection, fields in order)
    "queued-created": (JOBS, (("status", _A), ("created_at", _A))),  # status == queued AND created_at < T
    "running-lease": (JOBS, (("status", _A), ("lease_expires_at", _A))),  # status == running AND lease_expires_at < T
    "tenant-created": (JOBS, (("tenant", _A), ("created_at", _A))),  # tenant == T AND created_at >= now - 1 min (quota)
    # status IN [...] AND updated_at < T (stale batches)
    "open-updated": (BATCHES_COLLECTION, (("status", _A), ("updated_at", _A))),
    "tenant-newest": (BATCHES_COLLECTION, (("tenant", _A), ("created_at", _D))),
    "tenant-newest-files": (FILES_COLLECTION, (("tenant", _A), ("created_at", _D))),
    "tenant-oldest-files": (FILES_COLLECTION, (("tenant", _A), ("created_at", _A))),
    "purpose-newest-files": (FILES_COLLECTION, (("tenant", _A), ("purpose", _A), ("created_at", _D))),
    "purpose-oldest-files": (FILES_COLLECTION, (("tenant", _A), ("purpose", _A), ("created_at", _A))),
}


@dataclass
class StoreArgs:
    project: pulumi.Input[str]
    region: str
    firestore_location: str
    database: str
    create_database: bool
    results_bucket: str
    batch_bucket: str
    models_bucket: str
    sources_bucket: str
    results_retention_days: int
    batch_retention_days: int
    force_destroy: bool = False
    labels: dict[str, str] = field(default_factory=dict)


class Store(pulumi.ComponentResource):
    database_name: pulumi.Output[str]
    results_bucket: gcp.storage.Bucket
    batch_bucket: gcp.storage.Bucket
    models_bucket: gcp.storage.Bucket
    sources_bucket: gcp.storage.Bucket

    def __init__(self, name: str, args: StoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.results_retention_days < 1 or args.batch_retention_days < 1:
            raise ValueError("Store: retention must be at least one day")
        buckets = [args.results_bucket, args.batch_bucket, args.models_bucket, args.sources_bucket]
        if len(set(buckets)) != 4:
            raise ValueError("Store: the four buckets need distinct names")
        if any(not 3 <= len(b) <= 63 for b in buckets):
            raise ValueError("Store: bucket names must be 3-63 characters")
        super().__init__("llmq:infra:Store", name, None, opts)
        self._store_name, self._store_args, self._store_opts = name, args, opts

        db_deps: list[pulumi.Resource] = []
        if args.create_database:
            # deletion_policy ABANDON: `pulumi destroy` never deletes the jobs' history.
            database = gcp.firestore.Database(
                f"{name}-database",
                project=args.project,
                name=args.database,
                location_id=args.firestore_location,
                type="FIRESTORE_NATIVE",
                deletion_policy="ABANDON",
                opts=child_options(self, opts),
            )
            self.database_name = database.name
            db_deps.append(database)
        else:
            self.database_name = pulumi.Output.from_input(args.database)
        self._indexes(db_deps)

        self.results_bucket = self._bucket("results", args.results_bucket, delete_after_days=args.results_retention_days,
                                           force_destroy=args.force_destroy)
        self.batch_bucket = self._bucket("batch", args.batch_bucket, delete_after_days=args.batch_retention_days,
                                         force_destroy=args.force_destroy)
        # Weights stay until replaced; no soft-delete copy of tens of GB per replacement.
        self.models_bucket = self._bucket("models", args.models_bucket, delete_after_days=None,
                                          force_destroy=args.force_destroy, soft_delete=False)
        # Function source archives: Pulumi replaces them (content-hashed names), nothing else reads them.
        self.sources_bucket = self._bucket("sources", args.sources_bucket, delete_after_days=None,
                                           force_destroy=True, soft_delete=False)
        self.register_outputs({
            "database": self.database_name,
            "results_bucket": self.results_bucket.name,
            "batch_bucket": self.batch_bucket.name,
            "models_bucket": self.models_bucket.name,
            "sources_bucket": self.sources_bucket.name,
        })

    def _indexes(self, deps: list[pulumi.Resource]) -> None:
        """TTL policies, exemptions and composite indexes. Firestore runs index operations on a
        database one after another; chaining them keeps concurrent updates from being rejected."""
        name, args = self._store_name, self._store_args
        previous = list(deps)

        def chained() -> pulumi.ResourceOptions:
            return child_options(self, self._store_opts, depends_on=previous[-1:])

        # TTL: one field per collection group; the TTL field itself is not indexed. The request copy is
        # a subcollection, which a parent's deletion does not remove: it carries its own expire_at.
        for collection in (JOBS, BATCHES_COLLECTION, REQUEST, FILES_COLLECTION):
            previous.append(gcp.firestore.Field(
                f"{name}-{collection}-expire-at-ttl",
                project=args.project,
                database=args.database,
                collection=collection,
                field=TTL_FIELD,
                ttl_config=gcp.firestore.FieldTtlConfigArgs(),
                index_config=gcp.firestore.FieldIndexConfigArgs(),
                opts=chained(),
            ))
        for job_field in UNINDEXED_JOB_FIELDS:
            previous.append(gcp.firestore.Field(
                f"{name}-jobs-{job_field.replace('_', '-')}-unindexed",
                project=args.project,
                database=args.database,
                collection=JOBS,
                field=job_field,
                index_config=gcp.firestore.FieldIndexConfigArgs(),  # empty: no single-field index
                opts=chained(),
            ))
        # The request copy is up to ~1 MB of JSON, read by id only.
        previous.append(gcp.firestore.Field(
            f"{name}-request-message-unindexed",
            project=args.project, database=args.database, collection=REQUEST, field="message",
            index_config=gcp.firestore.FieldIndexConfigArgs(), opts=chained(),
        ))
        # The runner's cancellation listener: runner_instance == X AND status == cancelled, served by merging
        # this index with the default one on status (equalities only: no composite index).
        previous.append(gcp.firestore.Field(
            f"{name}-jobs-runner-instance",
            project=args.project, database=args.database, collection=JOBS, field="runner_instance",
            index_config=gcp.firestore.FieldIndexConfigArgs(indexes=[
                gcp.firestore.FieldIndexConfigIndexArgs(order="ASCENDING", query_scope="COLLECTION"),
            ]),
            opts=chained(),
        ))
        for index_name, (collection, fields) in COMPOSITE_INDEXES.items():
            previous.append(gcp.firestore.Index(
                f"{name}-{collection}-{index_name}",
                project=args.project,
                database=args.database,
                collection=collection,
                query_scope="COLLECTION",
                fields=[gcp.firestore.IndexFieldArgs(field_path=path, order=order) for path, order in fields],
                opts=chained(),
            ))

    def _bucket(self, role: str, bucket_name: str, *, delete_after_days: int | None, force_destroy: bool,
                soft_delete: bool = True) -> gcp.storage.Bucket:
        rules = [gcp.storage.BucketLifecycleRuleArgs(
            action=gcp.storage.BucketLifecycleRuleActionArgs(type="AbortIncompleteMultipartUpload"),
            condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=1),
        )]
        if role == "batch":
            # Uploaded files (jobs/files.py) with an expiry shorter than the bucket's age rule carry it as
            # their custom time: deleted once it has passed.
            rules.append(gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(days_since_custom_time=0,
                                                                       matches_prefixes=[FILES_PREFIX]),
            ))
        if delete_after_days is not None:
            rules.append(gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=delete_after_days),
            ))
        return gcp.storage.Bucket(
            f"{self._store_name}-{role}",
            project=self._store_args.project,
            name=bucket_name,
            location=self._store_args.region,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            force_destroy=force_destroy,
            lifecycle_rules=rules,
            soft_delete_policy=None if soft_delete else gcp.storage.BucketSoftDeletePolicyArgs(
                retention_duration_seconds=0),
            labels={**self._store_args.labels, "role": role},
            opts=child_options(self, self._store_opts),
        )
