"""Admission at a function instance (jobs/adapters/admission.py), without emulators: requests queue for a
slot within the wait budget, and are refused at once, before any work, when the wait would pass it."""

from __future__ import annotations

import threading
import time

import pytest

from jobs.adapters.admission import Admission
from jobs.errors import Overloaded


def _hold(admission: Admission, entered: threading.Event, release: threading.Event) -> threading.Thread:
    def run() -> None:
        with admission.slot():
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(10)
    return thread


def test_a_request_queues_for_a_slot_within_the_budget() -> None:
    admission = Admission(slots=1, max_wait_seconds=10)
    entered, release = threading.Event(), threading.Event()
    holder = _hold(admission, entered, release)
    threading.Timer(0.2, release.set).start()
    with admission.slot():  # waits for the holder, well inside the budget
        pass
    holder.join()


def test_past_the_budget_the_answer_is_overloaded_with_retry_after() -> None:
    admission = Admission(slots=1, max_wait_seconds=0.2)
    entered, release = threading.Event(), threading.Event()
    holder = _hold(admission, entered, release)
    try:
        with pytest.raises(Overloaded) as refused, admission.slot():
            pytest.fail("admitted past a full slot")
        assert refused.value.status == 503 and refused.value.retry_after and refused.value.retry_after >= 1
    finally:
        release.set()
        holder.join()


def test_when_the_queue_implies_too_long_a_wait_the_refusal_is_immediate() -> None:
    admission = Admission(slots=1, max_wait_seconds=0.5)
    for _ in range(40):  # teach it that a slot is held about 0.05 s
        with admission.slot():
            time.sleep(0.05)
    entered, release = threading.Event(), threading.Event()
    holder = _hold(admission, entered, release)
    waiters = [threading.Thread(target=lambda: _try(admission)) for _ in range(20)]
    for waiter in waiters:
        waiter.start()
    try:
        deadline = time.monotonic() + 5
        while admission.expected_wait() <= 0.5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert admission.expected_wait() > 0.5  # 20 waiting × 0.05 s / 1 slot
        started = time.monotonic()
        with pytest.raises(Overloaded), admission.slot():
            pytest.fail("admitted past the budget")
        assert time.monotonic() - started < 0.1  # at once, not after the budget
    finally:
        release.set()
        holder.join()
        for waiter in waiters:
            waiter.join()


def _try(admission: Admission) -> None:
    try:
        with admission.slot():
            pass
    except Overloaded:
        pass
