"""The dead-letter handler's logic: Pub/Sub gave up on a job's message; make the job's document say so."""

from __future__ import annotations

import logging
from datetime import datetime

from opentelemetry.trace import SpanKind

from jobs import lifecycle, tracing
from jobs.announce import announce_job
from jobs.ports import JobStore
from jobs.push import PushEnvelope, UnreadableMessage, decode_job_message
from jobs.webhooks import Announcer

log = logging.getLogger(__name__)

# Set by Pub/Sub on a dead-lettered message: how many times the source subscription delivered it.
DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"


def handle_dead_letter(store: JobStore, envelope: PushEnvelope, *, now: datetime,
                       announcer: Announcer | None = None) -> str:
    """Mark the job failed/dead_lettered unless it is finished or held by a live lease.
    Returns what was done. Raises DependencyUnavailable (the dead letter is then redelivered)."""
    attributes = envelope.message.attributes
    job_id = attributes.get("job_id")
    if job_id is None:
        try:
            job_id = decode_job_message(envelope).job_id
        except UnreadableMessage:
            log.error("dead letter without a job id; dropped")
            return "no job id"
    count = attributes.get(DELIVERY_COUNT_ATTRIBUTE)
    attempts = int(count) if count and count.isdigit() else envelope.delivery_attempt
    # A dead letter keeps the message's attributes: the job's trace ends with the span that says it was lost.
    with tracing.job_span("dead_letter", job_id, parent=tracing.extract(attributes), kind=SpanKind.CONSUMER,
                          attributes={"llmq.delivery_attempts": attempts or 0}) as span:
        record, changed = store.update(
            job_id, lambda current: lifecycle.dead_letter(current, now=now, delivery_attempts=attempts)
        )
        if changed:
            announce_job(announcer, store, record)  # not announced: the reconciler will
        outcome = "no such job" if record is None else "marked dead_lettered" if changed else "left as it is"
        tracing.record_outcome(span, outcome)
        log.info("dead letter handled", extra={"job_id": job_id, "outcome": outcome, "attempt": attempts})
    return outcome
