"""Session fixtures: one real local stack (emulators, functions, runner, tiny model) on free ports,
started once, found through its stack.json, and stopped as a process group at the end.
Tests isolate themselves by their own job ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.stack_client import Stack, started_stack

REPO = Path(__file__).resolve().parents[1]
STACK_START_TIMEOUT = 420  # a cold CI machine builds the model and boots three JVM emulators


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("stack")
    # The tiny model is shared with the developer's own stack: build it once, in .local/models.
    models = REPO / ".local" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (state_dir / "models").symlink_to(models, target_is_directory=True)
    # A short lease: a killed runner's job is taken over within seconds, not half a minute.
    # No periodic reconciler: the fault tests need to see what the pipeline does on its own.
    # An OpenAI model name for the stack's model: OpenAI's own examples run unchanged (tests/test_batch_api.py).
    with started_stack(state_dir, "--push-topics", "4", "--runner-env", "LLMQ_LEASE_SECONDS=6", "--reconcile-every", "0",
                       "--model-alias", "gpt-3.5-turbo-0125=tiny-llama", timeout=STACK_START_TIMEOUT) as running:
        yield running


@pytest.fixture(scope="session")
def db(stack: Stack) -> Any:
    return stack.firestore()


@pytest.fixture()
def http(stack: Stack) -> Iterator[httpx.Client]:
    with stack.http() as client:
        yield client


# The tiers (README): `pytest -m fast` runs in seconds on in-memory ports; everything else is `integration`
# (the local stack on the emulators, or a real model) or `static` (ruff, mypy).
_INTEGRATION_FIXTURES = {"stack", "db", "http"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if not any(item.get_closest_marker(m) for m in ("integration", "static")):
            item.add_marker(pytest.mark.fast)
    """Tests marked `restarts_runner` run last. After pushes fail with "connection refused" (a
    runner being restarted) the Pub/Sub emulator holds those subscriptions' messages back for
    minutes, where Pub/Sub would retry with the subscription's backoff; a test after them that
    pushes through the stack's topics would wait on the emulator, not on the platform."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_runner") is not None)
