"""Tools for the fault tests: jobs published to topics of the test's own, extra runner processes,
pausing and killing components, and waiting on log lines."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # no py.typed

from jobs.adapters.firestore_store import FirestoreJobStore
from jobs.adapters.pubsub_publisher import PubSubPublisher
from jobs.catalog import ModelCatalog, ModelSpec
from jobs.models import JobMessage, JobRequest
from jobs.service import JobService
from scripts.processes import ManagedProcess, free_port
from scripts.stack_client import Stack

REPO = Path(__file__).resolve().parents[1]


def create_push_topic(stack: Stack, endpoints: list[str], *, max_delivery_attempts: int = 10,
                      max_backoff: int = 5) -> str:
    """A topic of the test's own, with one push subscription per endpoint (dead-lettering into the
    stack's dead-letter topic); with no endpoints, nobody reads it. Returns the topic name."""
    topic = f"test-{uuid.uuid4().hex[:8]}"
    with stack.emulator_env():
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        topic_path = publisher.topic_path(stack.project, topic)
        publisher.create_topic(name=topic_path)
        for i, endpoint in enumerate(endpoints):
            subscriber.create_subscription(request={
                "name": subscriber.subscription_path(stack.project, f"{topic}-{i}"),
                "topic": topic_path,
                "push_config": {"push_endpoint": endpoint},
                "ack_deadline_seconds": 60,
                "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": max_backoff}},
                "dead_letter_policy": {
                    "dead_letter_topic": publisher.topic_path(stack.project, stack.info["dead_letter_topic"]),
                    "max_delivery_attempts": max_delivery_attempts,
                },
            })
    return topic


class JobFactory:
    """Creates jobs exactly as the submit function does (the real JobService, Firestore and
    Pub/Sub adapters), publishing to a topic of the test's choice."""

    def __init__(self, stack: Stack, topic: str) -> None:
        with stack.emulator_env():
            client = pubsub_v1.PublisherClient()
        self.tenant = str(stack.info["tenant"])  # the stack's own key's tenant: its jobs read back over HTTP
        self.store = FirestoreJobStore(stack.firestore())
        self.publisher = PubSubPublisher(client, project=stack.project, topics=[topic], timeout=10)
        self.service = JobService(store=self.store, publisher=self.publisher,
                                  catalog=ModelCatalog([ModelSpec(id=stack.info["model"])]))

    def submit(self, body: dict[str, Any]) -> JobMessage:
        view, created = self.service.submit(JobRequest.model_validate(body), tenant=self.tenant, idempotency_key=None)
        assert created
        message = self.store.get_message(view.id)
        assert message is not None
        return message


@contextmanager
def _extra_instance(stack: Stack, name: str, argv: list[str], ready_path: str, tmp_path: Path,
                    settings: dict[str, str], *, port: int,
                    environment: dict[str, str] | None = None) -> Iterator[tuple[str, ManagedProcess]]:
    """Another instance of a stack service, with the stack's settings plus `settings` (LLMQ_ names
    without the prefix) and `environment` (other variables), started and stopped around the block;
    yields its base URL and its process."""
    env = {**os.environ, **stack.info["env"], **stack.info["settings_env"], "PYTHONPATH": str(REPO)}
    env.update({f"LLMQ_{k.upper()}": v for k, v in settings.items()})
    env.update(environment or {})
    process = ManagedProcess(f"{name}-{port}", argv, log_dir=tmp_path, env=env, cwd=REPO)
    process.start()
    try:
        process.wait_http(f"http://127.0.0.1:{port}{ready_path}", timeout=120)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.stop()


@contextmanager
def extra_runner(stack: Stack, tmp_path: Path, **settings: str) -> Iterator[str]:
    """Another runner instance; yields its push URL."""
    with extra_runner_process(stack, tmp_path, settings=settings) as (url, _process):
        yield url


@contextmanager
def extra_runner_process(stack: Stack, tmp_path: Path, *, settings: dict[str, str] | None = None,
                         environment: dict[str, str] | None = None) -> Iterator[tuple[str, ManagedProcess]]:
    """Another runner instance, with other environment variables if need be; yields its push URL and process."""
    port = free_port()
    argv = [sys.executable, "-m", "runner", "--port", str(port)]
    with _extra_instance(stack, "runner", argv, "/readyz", tmp_path, settings or {}, port=port,
                         environment=environment) as (url, process):
        yield f"{url}/push", process


@contextmanager
def extra_function(stack: Stack, target: str, tmp_path: Path, **settings: str) -> Iterator[str]:
    """Another instance of a function; yields its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "scripts.serve_function", "--target", target,
            "--source", str(REPO / "functions" / target / "main.py"), "--port", str(port)]
    with _extra_instance(stack, target, argv, "/openapi.json", tmp_path, settings, port=port) as (url, _process):
        yield url


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP a component (its whole process group) and always SIGCONT it again."""
    os.killpg(os.getpgid(pid), signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(os.getpgid(pid), signal.SIGCONT)


def wait_for_log(path: Path, needle: str, *, timeout: float, start: int = 0) -> None:
    """Wait until `needle` appears in the log after byte offset `start`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace")[start:]:
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not seen in {path} within {timeout}s")


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0

