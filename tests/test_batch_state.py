"""The batch state machine and the decisions that change `batches/{id}`: pure, no emulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobs import batches
from jobs.batch_state import FINAL_STATUSES, RESUMABLE, BatchStatus, transition
from jobs.batches import BatchRecord, RequestCounts
from jobs.state import InvalidTransition

S = BatchStatus
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
ALLOWED = {
    (S.VALIDATING, S.IN_PROGRESS), (S.VALIDATING, S.FAILED), (S.VALIDATING, S.CANCELLING),
    (S.IN_PROGRESS, S.FINALIZING), (S.IN_PROGRESS, S.FAILED), (S.IN_PROGRESS, S.CANCELLING),
    (S.FINALIZING, S.IN_PROGRESS), (S.FINALIZING, S.COMPLETED), (S.FINALIZING, S.FAILED),
    (S.FINALIZING, S.CANCELLING),
    (S.CANCELLING, S.CANCELLED),
    (S.COMPLETED, S.VALIDATING), (S.FAILED, S.VALIDATING),
}


def record(status: BatchStatus = S.VALIDATING, **changes: object) -> BatchRecord:
    fresh = BatchRecord.new(batch_id="batch_t", input_uri="gs://b/in.jsonl", output_prefix="gs://b/outbox/batch_t/",
                            now=NOW)
    return fresh.model_copy(update={"status": status, **changes})


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("target", list(S))
def test_the_table_allows_exactly_these_moves(current: BatchStatus, target: BatchStatus) -> None:
    allowed = (current, target) in ALLOWED
    assert transition.allows(current, target) is allowed
    if allowed:
        assert transition(current, target) is target
    else:
        with pytest.raises(InvalidTransition):
            transition(current, target)


def test_final_and_resumable_statuses() -> None:
    assert FINAL_STATUSES == {S.COMPLETED, S.FAILED, S.CANCELLED}
    assert all(s.is_final for s in FINAL_STATUSES) and not S.CANCELLING.is_final
    assert RESUMABLE == {S.COMPLETED, S.FAILED}  # a cancelled batch is never reopened
    assert not any(transition.allows(S.CANCELLED, s) for s in S)


def test_with_status_checks_the_table_and_stamps_once() -> None:
    moved = batches.with_status(record(), S.IN_PROGRESS, now=LATER)
    assert moved.in_progress_at == LATER and moved.updated_at == LATER
    again = batches.with_status(moved, S.IN_PROGRESS, now=LATER + timedelta(seconds=1))  # a progress write
    assert again.in_progress_at == LATER
    with pytest.raises(InvalidTransition):
        batches.with_status(record(S.CANCELLED), S.IN_PROGRESS, now=LATER)


def test_a_run_goes_validating_in_progress_finalizing_completed() -> None:
    counts = RequestCounts(total=3, completed=2, failed=1)
    started = batches.start_requests(record(), task_index=0, counts=RequestCounts(total=3), total=3, now=NOW,
                                     output_uri="gs://b/o", model="m")
    assert started.status is S.IN_PROGRESS and started.model == "m"
    finalizing = batches.begin_finalizing(started, now=LATER)
    assert finalizing is not None and finalizing.status is S.FINALIZING
    done = batches.finish_requests(finalizing, task_index=0, counts=counts, total=3, now=LATER, final_files=True,
                                   cancelled=False)
    assert done.status is S.COMPLETED and done.request_counts == counts
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at  # type: ignore[operator]
    # Straight from in_progress, the finalizing stamp is still set on the way.
    direct = batches.finish_requests(started, task_index=0, counts=counts, total=3, now=LATER, final_files=True,
                                     cancelled=False)
    assert direct.status is S.COMPLETED and direct.finalizing_at == LATER


def test_a_task_that_is_not_last_records_only_its_counts() -> None:
    started = record(S.IN_PROGRESS)
    mine = RequestCounts(total=10, completed=4, failed=1)
    part = batches.finish_requests(started, task_index=1, counts=mine, total=10, now=LATER, final_files=False,
                                   cancelled=False)
    assert part.status is S.IN_PROGRESS and part.task_counts == {"1": mine} and part.request_counts == mine
    assert batches.begin_finalizing(record(S.CANCELLING), now=LATER) is None


def test_cancel_is_kept_by_the_runner_and_ends_cancelled() -> None:
    cancelling = batches.cancel(record(S.IN_PROGRESS), now=NOW)
    assert cancelling is not None and cancelling.status is S.CANCELLING and cancelling.cancelling_at == NOW
    assert batches.cancel(cancelling, now=LATER) is None and batches.cancel(record(S.COMPLETED), now=LATER) is None
    kept = batches.start_requests(cancelling, task_index=0, counts=RequestCounts(), total=1, now=LATER)
    assert kept.status is S.CANCELLING
    ended = batches.finish_requests(kept, task_index=0, counts=RequestCounts(total=1, failed=1), total=1, now=LATER,
                                    final_files=True, cancelled=True)
    assert ended.status is S.CANCELLED and ended.cancelled_at == LATER


def test_resume_reopens_failed_and_completed_only() -> None:
    failed = record(S.FAILED, error=batches.BatchErrorInfo(code="runner_lost", message="x"), failed_at=NOW)
    reopened = batches.resume(failed, now=LATER)
    assert reopened is not None and reopened.status is S.VALIDATING and reopened.error is None
    assert batches.resume(record(S.COMPLETED), now=LATER) is not None
    for status in (S.VALIDATING, S.IN_PROGRESS, S.FINALIZING, S.CANCELLING, S.CANCELLED):
        assert batches.resume(record(status), now=LATER) is None
    # Asked again over the API, only a failed batch is started again.
    assert batches.resume_failed(failed, now=LATER) is not None
    assert batches.resume_failed(record(S.COMPLETED), now=LATER) is None


def test_a_runner_that_starts_after_its_batch_was_given_up_resumes_it() -> None:
    lost = batches.abandon(record(), now=NOW + timedelta(hours=2), stale_for=timedelta(hours=1))
    assert lost is not None and lost.status is S.FAILED
    started = batches.start_requests(lost, task_index=0, counts=RequestCounts(total=2), total=2, now=LATER)
    assert started.status is S.IN_PROGRESS and started.error is None


def test_unusable_input_fails_or_ends_a_cancel() -> None:
    counts = RequestCounts(total=2, failed=2)
    failed = batches.fail_input(record(), code="invalid_input_file", message="m", counts=counts, now=LATER)
    assert failed.status is S.FAILED and failed.error is not None and failed.error.code == "invalid_input_file"
    assert failed.request_counts == counts and failed.failed_at == LATER
    ended = batches.fail_input(record(S.CANCELLING), code="input_not_found", message="m", counts=counts, now=LATER)
    assert ended.status is S.CANCELLED


def test_a_failed_relaunch_goes_back_to_failed() -> None:
    reopened = batches.resume(record(S.FAILED), now=NOW)
    assert reopened is not None
    back = batches.launch_failed(reopened, now=LATER, message="no capacity")
    assert back is not None and back.status is S.FAILED and back.error is not None
    assert back.error.code == batches.LAUNCH_FAILED
    assert batches.launch_failed(record(S.IN_PROGRESS), now=LATER, message="x") is None
