"""Session fixtures: one real local stack (emulators, functions, runner, tiny model) on free ports,
started once, found through its stack.json, and stopped as a process group at the end.
Tests isolate themselves by their own job ids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack_client import Stack

REPO = Path(__file__).resolve().parents[1]
STACK_START_TIMEOUT = 420  # a cold CI machine builds the model and boots three JVM emulators


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("stack")
    # The tiny model is shared with the developer's own stack: build it once, in .local/models.
    models = REPO / ".local" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (state_dir / "models").symlink_to(models, target_is_directory=True)
    log = open(state_dir / "local_stack.out", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.local_stack", "up", "--state-dir", str(state_dir), "--push-topics", "4",
         # A short lease: a killed runner's job is taken over within seconds, not half a minute.
         "--runner-env", "LLMQ_LEASE_SECONDS=6"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + STACK_START_TIMEOUT
        while not (state_dir / "stack.json").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"local stack exited: {(state_dir / 'local_stack.out').read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"local stack not ready: {(state_dir / 'local_stack.out').read_text()[-4000:]}")
            time.sleep(0.2)
        yield Stack.load(state_dir)
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def db(stack: Stack):  # type: ignore[no-untyped-def]
    return stack.firestore()


@pytest.fixture()
def http(stack: Stack):  # type: ignore[no-untyped-def]
    with stack.http() as client:
        yield client
