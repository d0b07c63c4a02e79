"""The pure domain core: state machine, lifecycle decisions, request canonicalisation, ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from jobs import lifecycle
from jobs.ids import is_job_id, new_job_id
from jobs.lifecycle import ClaimOutcome, Completion
from jobs.models import JobErrorCode, JobRecord, JobRequest, Usage
from jobs.state import InvalidTransition, JobStatus, transition

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _record(**overrides: object) -> JobRecord:
    base: dict[str, object] = {
        "id": "job_" + "a" * 32, "tenant": "t", "status": JobStatus.QUEUED, "model": "m", "kind": "completion",
        "priority": "interactive", "created_at": NOW, "expire_at": NOW + timedelta(days=1), "request_hash": "h",
    }
    base.update(overrides)
    return JobRecord.model_validate(base)


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_final_states_have_no_way_out(final: JobStatus) -> None:
    assert final.is_final
    for target in JobStatus:
        with pytest.raises(InvalidTransition):
            transition(final, target)


def test_allowed_transitions() -> None:
    assert transition(JobStatus.QUEUED, JobStatus.RUNNING) is JobStatus.RUNNING
    assert transition(JobStatus.RUNNING, JobStatus.RUNNING) is JobStatus.RUNNING  # lease takeover
    with pytest.raises(InvalidTransition):
        transition(JobStatus.QUEUED, JobStatus.SUCCEEDED)
    with pytest.raises(InvalidTransition):
        transition(JobStatus.RUNNING, JobStatus.QUEUED)


def test_claim_of_a_queued_job_takes_a_lease() -> None:
    decision = lifecycle.decide_claim(_record(), owner="a", instance="i", now=NOW, lease_seconds=30)
    assert decision.outcome is ClaimOutcome.CLAIMED and decision.record is not None
    assert decision.record.status is JobStatus.RUNNING
    assert decision.record.lease_owner == "a"
    assert decision.record.lease_expires_at == NOW + timedelta(seconds=30)
    assert decision.record.attempts == 1 and decision.record.started_at == NOW


def test_claim_respects_a_live_lease_and_takes_over_an_expired_one() -> None:
    running = lifecycle.decide_claim(_record(), owner="a", instance="i", now=NOW, lease_seconds=30).record
    assert running is not None
    live = lifecycle.decide_claim(running, owner="b", instance="i", now=NOW + timedelta(seconds=10), lease_seconds=30)
    assert live.outcome is ClaimOutcome.LEASED and live.retry_after == pytest.approx(20)
    expired = lifecycle.decide_claim(running, owner="b", instance="i", now=NOW + timedelta(seconds=31), lease_seconds=30)
    assert expired.outcome is ClaimOutcome.CLAIMED and expired.record is not None
    assert expired.record.lease_owner == "b" and expired.record.attempts == 2
    assert expired.record.started_at == NOW  # the first start is kept


def test_the_lease_is_renewed_fenced_and_released_only_by_its_holder() -> None:
    claim = lifecycle.decide_claim(_record(), owner="a", instance="i", now=NOW, lease_seconds=30)
    lease, running = claim.lease, claim.record
    assert lease is not None and running is not None
    assert lease.expires_at == running.lease_expires_at and lease.renew_interval == 10
    # Fence: a write outside Firestore needs no renewal while more than half the lease is left.
    assert not lease.needs_fence(NOW + timedelta(seconds=14))
    assert lease.needs_fence(NOW + timedelta(seconds=15))
    renewed = lease.extended(NOW + timedelta(seconds=10))
    assert renewed.expires_at == NOW + timedelta(seconds=40) and renewed.owner == "a"
    written = lifecycle.renew(running, renewed)
    assert written is not None and written.lease_expires_at == renewed.expires_at
    # Lost to a takeover or a cancel: no renewal, no release, and the holder must stop.
    taken = lifecycle.decide_claim(running, owner="b", instance="i", now=NOW + timedelta(seconds=31),
                                   lease_seconds=30).record
    assert taken is not None
    assert lifecycle.renew(taken, renewed) is None
    assert lifecycle.release(taken, owner="a", now=NOW) is None
    cancelled = lifecycle.cancel(running, now=NOW)
    assert cancelled is not None and lifecycle.renew(cancelled, renewed) is None
    released = lifecycle.release(running, owner="a", now=NOW + timedelta(seconds=5))
    assert released is not None and released.lease_expires_at == NOW + timedelta(seconds=5)
    assert lifecycle.decide_claim(released, owner="b", instance="i", now=NOW + timedelta(seconds=6),
                                  lease_seconds=30).outcome is ClaimOutcome.CLAIMED


def test_the_view_is_the_records_public_fields() -> None:
    record = _record(lease_owner="secret-delivery", runner_instance="runner-1", metadata={"k": "v"})
    view = record.view().to_json()
    assert view["object"] == "job" and view["id"] == record.id and view["metadata"] == {"k": "v"}
    assert "lease_owner" not in view and "runner_instance" not in view and "tenant" not in view
    assert set(view) - {"object"} <= set(JobRecord.model_fields)


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_claim_of_a_finished_job_is_a_no_op(final: JobStatus) -> None:
    decision = lifecycle.decide_claim(_record(status=final), owner="a", instance="i", now=NOW, lease_seconds=30)
    assert decision.outcome is ClaimOutcome.FINISHED and decision.record is None


def test_only_the_lease_holder_completes() -> None:
    running = lifecycle.decide_claim(_record(), owner="a", instance="i", now=NOW, lease_seconds=30).record
    assert running is not None
    completion = Completion(output="hi", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1,
                            total_tokens=2), result_uri="gs://b/results/x.json", metrics={"generation_seconds": 1})
    assert lifecycle.complete(running, owner="b", now=NOW, completion=completion) is None
    done = lifecycle.complete(running, owner="a", now=NOW, completion=completion)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.lease_owner is None
    assert lifecycle.complete(done, owner="a", now=NOW, completion=completion) is None  # never twice


def test_fail_and_cancel_leave_finished_jobs_alone() -> None:
    done = _record(status=JobStatus.SUCCEEDED)
    assert lifecycle.fail(done, now=NOW, code=JobErrorCode.DEAD_LETTERED, message="y") is None
    assert lifecycle.cancel(done, now=NOW) is None
    cancelled = lifecycle.cancel(_record(), now=NOW)
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED


def test_body_hash_ignores_key_order_defaults_and_the_idempotency_key() -> None:
    a = JobRequest.model_validate({"prompt": "x", "max_tokens": 5})
    b = JobRequest.model_validate({"max_tokens": 5, "temperature": 1.0, "prompt": "x", "idempotency_key": "k"})
    c = JobRequest.model_validate({"prompt": "x", "max_tokens": 6})
    assert a.body_hash() == b.body_hash() != c.body_hash()


def test_request_is_strict() -> None:
    with pytest.raises(ValidationError):
        JobRequest.model_validate({"prompt": "x", "max_tokens": "5"})
    with pytest.raises(ValidationError):
        JobRequest.model_validate({"prompt": "x", "stream": 1})
    request = JobRequest.model_validate({"prompt": "x", "temperature": 1, "stop": "END"})
    assert request.stop_sequences == ("END",) and request.temperature == 1.0


def test_job_ids() -> None:
    assert new_job_id(tenant="t", idempotency_key="k") == new_job_id(tenant="t", idempotency_key="k")
    assert new_job_id(tenant="t", idempotency_key="k") != new_job_id(tenant="u", idempotency_key="k")
    assert new_job_id(tenant="t", idempotency_key=None) != new_job_id(tenant="t", idempotency_key=None)
    assert is_job_id(new_job_id(tenant="t", idempotency_key=None))
    assert not is_job_id("job_../../x")


def test_queued_job_past_its_deadline_expires_instead_of_running() -> None:
    record = _record(deadline_at=NOW - timedelta(seconds=1))
    decision = lifecycle.decide_claim(record, owner="a", instance="i", now=NOW, lease_seconds=30)
    assert decision.outcome is ClaimOutcome.EXPIRED and decision.record is not None
    assert decision.record.status is JobStatus.CANCELLED
    assert decision.record.error is not None and decision.record.error.code == "deadline_exceeded"
    in_time = lifecycle.decide_claim(_record(deadline_at=NOW + timedelta(seconds=1)), owner="a", instance="i",
                                     now=NOW, lease_seconds=30)
    assert in_time.outcome is ClaimOutcome.CLAIMED


def test_cancel_of_a_running_job_keeps_the_lease_for_the_partial_output() -> None:
    running = lifecycle.decide_claim(_record(), owner="a", instance="i", now=NOW, lease_seconds=30).record
    assert running is not None
    cancelled = lifecycle.cancel(running, now=NOW)
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED and cancelled.lease_owner == "a"
    partial = Completion(output="par", finish_reason="cancelled", usage=Usage(prompt_tokens=1, completion_tokens=2,
                         total_tokens=3), result_uri=None, metrics={})
    assert lifecycle.record_partial(cancelled, owner="b", completion=partial) is None
    kept = lifecycle.record_partial(cancelled, owner="a", completion=partial)
    assert kept is not None and kept.output == "par" and kept.lease_owner is None
    assert kept.status is JobStatus.CANCELLED
    assert lifecycle.stream_output(cancelled, owner="a", output="more") is None  # no writes after a cancel


def test_dead_letter_spares_finished_and_live_leased_jobs() -> None:
    assert lifecycle.dead_letter(_record(status=JobStatus.SUCCEEDED), now=NOW, delivery_attempts=5) is None
    running = lifecycle.decide_claim(_record(), owner="a", instance="i", now=NOW, lease_seconds=30).record
    assert running is not None
    assert lifecycle.dead_letter(running, now=NOW + timedelta(seconds=5), delivery_attempts=5) is None
    lapsed = lifecycle.dead_letter(running, now=NOW + timedelta(seconds=31), delivery_attempts=5)
    assert lapsed is not None and lapsed.status is JobStatus.FAILED
    assert lapsed.error is not None and lapsed.error.code == "dead_lettered" and "5" in lapsed.error.message
    queued = lifecycle.dead_letter(_record(), now=NOW, delivery_attempts=None)
    assert queued is not None and queued.status is JobStatus.FAILED


def test_api_key_authenticator_caches_and_refuses() -> None:
    from jobs.auth import ApiKey, ApiKeyAuthenticator, hash_key, new_key
    from jobs.errors import Unauthenticated

    raw = new_key()
    reads: list[str] = []

    class Keys:  # an in-memory key table, enough for the authenticator's own logic
        def get(self, key_hash: str) -> ApiKey | None:
            reads.append(key_hash)
            return ApiKey(key_hash=hash_key(raw), tenant="acme", name="", created_at=NOW) \
                if key_hash == hash_key(raw) else None

    now = [0.0]
    auth = ApiKeyAuthenticator(Keys(), clock=lambda: now[0], cache_seconds=30)  # type: ignore[arg-type]
    assert auth.tenant_for(f"Bearer {raw}") == "acme"
    assert auth.tenant_for(f"bearer {raw}") == "acme"
    assert len(reads) == 1  # cached
    now[0] = 31
    auth.tenant_for(f"Bearer {raw}")
    assert len(reads) == 2  # re-read after the cache period (revocation takes effect)
    for bad in (None, "", f"Basic {raw}", "Bearer llmq_unknown", "Bearer not-a-key"):
        with pytest.raises(Unauthenticated):
            auth.tenant_for(bad)


def test_abandon_ends_only_stale_open_batches() -> None:
    from jobs.batch_state import BatchStatus
    from jobs.batches import RUNNER_LOST, BatchRecord, abandon

    now = datetime(2026, 11, 23, tzinfo=UTC)
    stale_for = timedelta(hours=1)
    old = BatchRecord.new(batch_id="batch_x", input_uri="gs://b/i", output_prefix="gs://b/o/", now=now - 2 * stale_for)
    recent = old.model_copy(update={"updated_at": now - stale_for / 2})
    assert abandon(recent, now=now, stale_for=stale_for) is None
    failed = abandon(old, now=now, stale_for=stale_for)
    assert failed is not None and failed.status is BatchStatus.FAILED and failed.failed_at == now
    assert failed.error is not None and failed.error.code == RUNNER_LOST
    cancelling = old.model_copy(update={"status": BatchStatus.CANCELLING})
    ended = abandon(cancelling, now=now, stale_for=stale_for)
    assert ended is not None and ended.status is BatchStatus.CANCELLED and ended.cancelled_at == now
    for final in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED):
        assert abandon(old.model_copy(update={"status": final}), now=now, stale_for=stale_for) is None


def test_the_batch_plan_takes_the_models_aliases(tmp_path: object) -> None:
    import json
    from pathlib import Path

    from runner.batch import plan_batch

    path = Path(str(tmp_path)) / "in.jsonl"
    lines = [{"custom_id": name, "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "model": name}}
             for name in ("tiny-llama", "gpt-3.5-turbo-0125", "gpt-4")]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    plan = plan_batch(path, model="tiny-llama", aliases={"gpt-3.5-turbo-0125": "tiny-llama", "gpt-4": "other"})
    assert [line.custom_id for line in plan.lines] == ["tiny-llama", "gpt-3.5-turbo-0125"]
    assert [(e.custom_id, e.code.value) for e in plan.errors] == [("gpt-4", "model_not_found")]

