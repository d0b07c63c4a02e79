"""The batch state machine and the decisions that change `batches/{id}`: pure, no emulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobs import batches
from jobs.batch_state import FINAL_STATUSES, RESUMABLE, BatchStatus, transition
from jobs.batches import BatchRecord, RequestCounts, TaskCounts
from jobs.state import InvalidTransition

S = BatchStatus
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
ALLOWED = {
    (S.VALIDATING, S.IN_PROGRESS), (S.VALIDATING, S.FAILED), (S.VALIDATING, S.CANCELLING),
    (S.IN_PROGRESS, S.FINALIZING), (S.IN_PROGRESS, S.FAILED), (S.IN_PROGRESS, S.CANCELLING),
    (S.FINALIZING, S.IN_PROGRESS), (S.FINALIZING, S.COMPLETED), (S.FINALIZING, S.FAILED),
    (S.FINALIZING, S.CANCELLING),
    (S.VALIDATING, S.EXPIRED), (S.IN_PROGRESS, S.EXPIRED), (S.FINALIZING, S.EXPIRED),
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
    assert FINAL_STATUSES == {S.COMPLETED, S.FAILED, S.CANCELLED, S.EXPIRED}
    assert all(s.is_final for s in FINAL_STATUSES) and not S.CANCELLING.is_final
    assert RESUMABLE == {S.COMPLETED, S.FAILED}  # a cancelled batch is never reopened
    assert not any(transition.allows(S.CANCELLED, s) or transition.allows(S.EXPIRED, s) for s in S)


def test_with_status_checks_the_table_and_stamps_once() -> None:
    moved = batches.with_status(record(), S.IN_PROGRESS, now=LATER)
    assert moved.in_progress_at == LATER and moved.updated_at == LATER
    again = batches.with_status(moved, S.IN_PROGRESS, now=LATER + timedelta(seconds=1))  # a progress write
    assert again.in_progress_at == LATER
    with pytest.raises(InvalidTransition):
        batches.with_status(record(S.CANCELLED), S.IN_PROGRESS, now=LATER)


def test_a_run_goes_validating_in_progress_finalizing_completed() -> None:
    counts = TaskCounts(total=3, completed=2, failed=1, prompt_tokens=30, completion_tokens=20)
    started = batches.start_requests(record(), task_index=0, counts=TaskCounts(total=3), total=3, now=NOW,
                                     output_uri="gs://b/o", model="m")
    assert started.status is S.IN_PROGRESS and started.model == "m"
    finalizing = batches.begin_finalizing(started, now=LATER)
    assert finalizing is not None and finalizing.status is S.FINALIZING
    done = batches.finish_requests(finalizing, task_index=0, counts=counts, total=3, now=LATER, final_files=True,
                                   cancelled=False)
    assert done.status is S.COMPLETED and done.request_counts == RequestCounts(total=3, completed=2, failed=1)
    assert done.usage == batches.TokenUsage(prompt_tokens=30, completion_tokens=20)
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at  # type: ignore[operator]
    # Straight from in_progress, the finalizing stamp is still set on the way.
    direct = batches.finish_requests(started, task_index=0, counts=counts, total=3, now=LATER, final_files=True,
                                     cancelled=False)
    assert direct.status is S.COMPLETED and direct.finalizing_at == LATER


def test_a_task_that_is_not_last_records_only_its_counts() -> None:
    started = record(S.IN_PROGRESS)
    mine = TaskCounts(total=10, completed=4, failed=1)
    part = batches.finish_requests(started, task_index=1, counts=mine, total=10, now=LATER, final_files=False,
                                   cancelled=False)
    assert part.status is S.IN_PROGRESS and part.task_counts == {"1": mine}
    assert part.request_counts == RequestCounts(total=10, completed=4, failed=1)
    assert batches.begin_finalizing(record(S.CANCELLING), now=LATER) is None


def test_cancel_is_kept_by_the_runner_and_ends_cancelled() -> None:
    cancelling = batches.cancel(record(S.IN_PROGRESS), now=NOW)
    assert cancelling is not None and cancelling.status is S.CANCELLING and cancelling.cancelling_at == NOW
    assert batches.cancel(cancelling, now=LATER) is None and batches.cancel(record(S.COMPLETED), now=LATER) is None
    kept = batches.start_requests(cancelling, task_index=0, counts=TaskCounts(), total=1, now=LATER)
    assert kept.status is S.CANCELLING
    ended = batches.finish_requests(kept, task_index=0, counts=TaskCounts(total=1, failed=1), total=1, now=LATER,
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
    started = batches.start_requests(lost, task_index=0, counts=TaskCounts(total=2), total=2, now=LATER)
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


def test_the_window_ends_a_batch_expired_through_finalizing_unless_it_was_cancelled() -> None:
    started = batches.start_requests(record(), task_index=0, counts=TaskCounts(total=3), total=3, now=NOW)
    files = {"output_file_id": "file-out", "error_file_id": "file-err"}
    expired = batches.finish_requests(started, task_index=0, counts=TaskCounts(total=3, completed=1, failed=2),
                                      total=3, now=LATER, final_files=True, cancelled=False, expired=True,
                                      file_ids=files)
    assert expired.status is S.EXPIRED and expired.finalizing_at == LATER and expired.expired_at == LATER
    assert expired.output_file_id == "file-out" and expired.error_file_id == "file-err"
    cancelling = batches.cancel(started, now=NOW)
    assert cancelling is not None
    cancelled = batches.finish_requests(cancelling, task_index=0, counts=TaskCounts(total=3), total=3, now=LATER,
                                        final_files=True, cancelled=False, expired=True)
    assert cancelled.status is S.CANCELLED and cancelled.expired_at is None


def test_the_reconciler_ends_a_batch_past_its_window_expired_and_a_cancelling_one_cancelled() -> None:
    stale = record(S.IN_PROGRESS, updated_at=NOW, expires_at=NOW + timedelta(minutes=30))
    later = NOW + timedelta(hours=2)
    ended = batches.abandon(stale, now=later, stale_for=timedelta(hours=1))
    assert ended is not None and ended.status is S.EXPIRED and ended.expired_at == later
    assert ended.error is not None and ended.error.code == batches.RUNNER_LOST
    within = record(S.IN_PROGRESS, updated_at=NOW, expires_at=NOW + timedelta(days=1))
    failed = batches.abandon(within, now=later, stale_for=timedelta(hours=1))
    assert failed is not None and failed.status is S.FAILED
    cancelling = batches.abandon(record(S.CANCELLING, updated_at=NOW, expires_at=NOW), now=later,
                                 stale_for=timedelta(hours=1))
    assert cancelling is not None and cancelling.status is S.CANCELLED


@pytest.mark.parametrize(("window", "seconds"), [("24h", 86400), ("90m", 5400), ("30s", 30), ("7d", 7 * 86400)])
def test_completion_windows(window: str, seconds: int) -> None:
    fresh = BatchRecord.new(batch_id="batch_w", input_uri="gs://b/i", output_prefix=None, now=NOW,
                            completion_window=window, ttl_seconds=60)
    assert fresh.expires_at == NOW + timedelta(seconds=seconds)
    assert fresh.expire_at is not None and fresh.expire_at >= fresh.expires_at  # the document outlives the window


@pytest.mark.parametrize("window", ["", "0h", "8d", "24", "1w", "24 h", "-1h", "1.5h"])
def test_other_windows_are_refused(window: str) -> None:
    with pytest.raises(ValueError, match="completion_window"):
        batches.window_length(window)


def test_the_view_is_openais_batch_object_with_llmqs_fields_beside_it() -> None:
    import openai.types

    done = batches.finish_requests(
        batches.start_requests(record(endpoint="/v1/chat/completions", input_file_id="file-in"), task_index=0,
                               counts=TaskCounts(total=2), total=2, now=NOW, model="m"),
        task_index=0, counts=TaskCounts(total=2, completed=2, prompt_tokens=7, completion_tokens=5), total=2,
        now=LATER, final_files=True, cancelled=False, file_ids={"output_file_id": "file-o", "error_file_id": None})
    view = done.view()
    sdk = openai.types.Batch.model_validate(view)  # the SDK's own model, validated strictly
    assert sdk.status == "completed" and sdk.input_file_id == "file-in" and sdk.output_file_id == "file-o"
    assert sdk.created_at == int(NOW.timestamp()) and sdk.completed_at == int(LATER.timestamp())
    assert sdk.expires_at == int((NOW + timedelta(hours=24)).timestamp()) and sdk.errors is None
    assert sdk.usage is not None and (sdk.usage.input_tokens, sdk.usage.output_tokens, sdk.usage.total_tokens) == (7, 5, 12)
    assert sdk.request_counts is not None and sdk.request_counts.completed == 2
    assert view["input_uri"] == "gs://b/in.jsonl" and "tenant" not in view and "task_counts" not in view
