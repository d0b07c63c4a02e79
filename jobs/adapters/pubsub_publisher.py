"""Publisher over Pub/Sub. Each priority has its own topics, so that `batch` jobs waiting in their
subscription's backlog never stand between an `interactive` job and the runner (Pub/Sub has no
priorities within a subscription). Production uses one topic per priority; the local stack may spread
jobs over several (the emulator pushes only 2 requests at a time per subscription), in turn: round
robin keeps the topics evenly loaded, where a hash of the job id would pile several running jobs onto
one subscription while others idle."""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
from collections.abc import Iterator

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # no py.typed

from jobs.errors import DependencyUnavailable
from jobs.models import JobMessage


class PubSubPublisher:
    def __init__(self, client: pubsub_v1.PublisherClient, *, project: str, topics: list[str], timeout: float,
                 batch_topics: list[str] | None = None) -> None:
        """`topics` take interactive jobs, `batch_topics` the `batch` ones (the same topics when not given)."""
        if not topics:
            raise ValueError("at least one topic is needed")
        self._client = client
        self._timeout = timeout
        self._turns: dict[str, Iterator[str]] = {
            "interactive": itertools.cycle([client.topic_path(project, t) for t in topics]),
            "batch": itertools.cycle([client.topic_path(project, t) for t in batch_topics or topics]),
        }
        self._lock = threading.Lock()

    def next_topic(self, priority: str = "interactive") -> str:
        with self._lock:
            return next(self._turns[priority])

    def publish(self, message: JobMessage) -> str:
        future = self._client.publish(
            self.next_topic(message.request.priority),
            message.model_dump_json().encode(),
            retry=Retry(timeout=self._timeout),
            timeout=self._timeout,
            **message.attributes(),
        )
        try:
            return str(future.result(timeout=self._timeout + 1))
        except (gexc.GoogleAPICallError, gexc.RetryError, concurrent.futures.TimeoutError, TimeoutError) as err:
            raise DependencyUnavailable("the job queue is unavailable") from err
