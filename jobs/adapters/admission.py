"""Admission at a function instance: a bounded number of requests work at once, the others queue, and
those that would wait past the queue budget are refused at once (503 Overloaded, Retry-After) instead of
hanging until a backing call times out.

The queue is not refused on length but on the wait it implies (Little's law: the requests ahead of a
newcomer, times the time a slot is held, over the slots): 500 clients served at 200 jobs/s wait about
2.5 s each, which is queueing, not saturation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from jobs.errors import Overloaded

_SMOOTHING = 0.1  # weight of the latest hold time in the moving average


class Admission:
    def __init__(self, *, slots: int, max_wait_seconds: float) -> None:
        if slots < 1:
            raise ValueError("at least one slot is needed")
        self._slots = threading.BoundedSemaphore(slots)
        self._slot_count = slots
        self._max_wait = max_wait_seconds
        self._lock = threading.Lock()
        self._waiting = 0
        self._hold_seconds = 0.0  # moving average of how long a request holds a slot

    def expected_wait(self) -> float:
        """Seconds a request arriving now would wait for a slot, by Little's law."""
        with self._lock:
            return self._expected_wait_locked()

    def _expected_wait_locked(self) -> float:
        return self._waiting * self._hold_seconds / self._slot_count

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the duration. Raises Overloaded, before any work, when the wait would pass the
        budget."""
        with self._lock:
            if self._expected_wait_locked() > self._max_wait:
                raise self._refusal()
            self._waiting += 1
        try:
            acquired = self._slots.acquire(timeout=self._max_wait)
        finally:
            with self._lock:
                self._waiting -= 1
        if not acquired:
            raise self._refusal()
        started = time.monotonic()
        try:
            yield
        finally:
            held = time.monotonic() - started
            with self._lock:
                self._hold_seconds += _SMOOTHING * (held - self._hold_seconds)
            self._slots.release()

    def _refusal(self) -> Overloaded:
        return Overloaded(f"this instance is at capacity (a wait over {self._max_wait:g} s); retry",
                          retry_after=max(1, round(self._max_wait)))
