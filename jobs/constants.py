"""Names and numbers that the platform's code and its deployment (pulumi/) must agree on, written once.

Plain values only (no pydantic, no Google client): the Pulumi program imports this module, and so do
the settings, the adapters and the local stack.
"""

from __future__ import annotations

from typing import Literal, get_args

# Firestore: the jobs collection, the subcollection with the durable copy of each request
# (jobs/{id}/request/body), and the field the TTL policies delete documents by.
JOBS_COLLECTION = "jobs"
BATCHES_COLLECTION = "batches"
WEBHOOK_ENDPOINTS_COLLECTION = "webhook_endpoints"  # tenants' webhook endpoints (jobs/webhooks.py)
FILES_COLLECTION = "files"  # OpenAI's Files API (jobs/files.py); the bytes under FILES_PREFIX of the batch bucket
REQUEST_SUBCOLLECTION = "request"
TTL_FIELD = "expire_at"

# The batch bucket: inline JSONL of POST /v1/batches is stored under ONDEMAND_PREFIX (the submit function may
# write there only), the nightly run reads NIGHTLY_PREFIX.
ONDEMAND_PREFIX = "inbox-ondemand/"
NIGHTLY_PREFIX = "inbox/"
FILES_PREFIX = "files/"  # uploads of POST /v1/files, written by the API alone

# Pub/Sub: the jobs topic's base name; `priority: "batch"` jobs go to "<jobs topic>-batch", and
# messages out of delivery attempts to "<jobs topic>-dead-letter".
JOBS_TOPIC = "jobs"
BATCH_TOPIC_SUFFIX = "-batch"
DEAD_LETTER_TOPIC_SUFFIX = "-dead-letter"
# Webhooks: one message per event and endpoint, pushed to the webhooks function (dead letters: given up).
WEBHOOK_TOPIC = "webhook-deliveries"

# How the API functions authenticate callers (jobs/adapters/caller.py).
AuthMode = Literal["api_key", "iam"]
AUTH_MODES: tuple[str, ...] = get_args(AuthMode)

MAX_WAIT_SECONDS = 60  # GET /v1/jobs/{id}?wait=N takes N up to this (CONTRACT §1)
# Per-tenant quotas (jobs/quotas.py); 0: no limit.
QUOTA_SUBMISSIONS_PER_MINUTE = 600
QUOTA_QUEUED_JOBS = 10_000

# The runner: sequences the engine runs at once (vLLM max_num_seqs), pushes one instance accepts, and
# batch pushes it holds on top while they wait for a batch slot (its Cloud Run concurrency is the sum
# of the last two); partial output of `stream` jobs is written at most once per STREAM_INTERVAL_SECONDS.
MAX_CONCURRENCY = 32
MAX_INFLIGHT = 48
MAX_WAITING_BATCH_PUSHES = 16
STREAM_INTERVAL_SECONDS = 1.0

RECONCILE_LEASE_LAPSED_SECONDS = 120  # the reconciler re-publishes a job whose lease lapsed this long ago

# Where Google publishes the certificates of its ID-token signers (jobs/adapters/id_tokens.py).
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"

MAX_TTL_SECONDS = 30 * 86400  # a job's longest ttl_seconds; the results bucket keeps objects as long
