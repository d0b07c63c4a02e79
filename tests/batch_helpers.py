"""Helpers for the batch tests: batch files, running `python -m runner.batch` against the stack, and
waiting on files and documents (events, never bare sleeps)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from scripts.processes import group_members
from scripts.stack_client import Stack

REPO = Path(__file__).resolve().parents[1]


def chat_line(custom_id: str, content: str, *, max_tokens: int = 8, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                     "temperature": 0, **body}}


def completion_line(custom_id: str, prompt: str, *, max_tokens: int = 8, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
            "body": {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **body}}


def jsonl(lines: Sequence[dict[str, Any] | str]) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def batch_env(stack: Stack, **settings: str) -> dict[str, str]:
    """The environment the stack's services run with (emulators, LLMQ_* settings), plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env.update(stack.info["env"])
    env.update(stack.info["settings_env"])
    env.update(settings)
    env["PYTHONPATH"] = str(REPO)
    return env


def start_batch(stack: Stack, *args: str, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "runner.batch", *args], cwd=REPO,
                                env=batch_env(stack, **settings), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def run_batch(stack: Stack, *args: str, log: Path, **settings: str) -> int:
    proc = start_batch(stack, *args, log=log, **settings)
    try:
        return proc.wait(timeout=300)
    finally:
        stop(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the batch runner with its vLLM engine processes, as the end of a Cloud Run task's container does
    (killing the runner alone would orphan its engine core), and wait until none of them is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _gone, alive = psutil.wait_procs(group_members(proc.pid), timeout=30)
    assert not alive, f"outlived the kill: {[p.name() for p in alive]}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None or group_members(proc.pid):
        kill_group(proc)


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None and not condition():
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"the batch process exited ({proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


class DocWatcher:
    """Every state of one `batches/{id}` document that a Firestore listener sees."""

    def __init__(self, db: Any, batch_id: str) -> None:
        self.history: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._final = threading.Event()
        self._watch = db.collection("batches").document(batch_id).on_snapshot(self._on_snapshot)

    def _on_snapshot(self, snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
        with self._lock:
            for snapshot in snapshots:
                if snapshot.exists:
                    doc = snapshot.to_dict()
                    self.history.append(doc)
                    if doc.get("status") in ("completed", "failed", "cancelled"):
                        self._final.set()

    def wait_final(self, timeout: float) -> dict[str, Any]:
        assert self._final.wait(timeout), f"the batch did not finish; seen: {self.statuses()}"
        return self.latest()

    def latest(self) -> dict[str, Any]:
        with self._lock:
            return self.history[-1]

    def statuses(self) -> list[str]:
        with self._lock:
            seen: list[str] = []
            for doc in self.history:
                if not seen or seen[-1] != doc["status"]:
                    seen.append(doc["status"])
            return seen

    def close(self) -> None:
        self._watch.unsubscribe()


def batch_final(db: Any, batch_id: str, *, timeout: float) -> dict[str, Any]:
    """The batch's document once a listener sees it final."""
    watcher = DocWatcher(db, batch_id)
    try:
        return watcher.wait_final(timeout)
    finally:
        watcher.close()


# OpenAI's own two-line batch example (its Batch API guide), byte for byte: it names an OpenAI model, which the
# test stack aliases to its own (tests/conftest.py: --model-alias gpt-3.5-turbo-0125=tiny-llama).
OPENAI_EXAMPLE = (
    '{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": '
    '"gpt-3.5-turbo-0125", "messages": [{"role": "system", "content": "You are a helpful assistant."},'
    '{"role": "user", "content": "Hello world!"}],"max_tokens": 1000}}\n'
    '{"custom_id": "request-2", "method": "POST", "url": "/v1/chat/completions", "body": {"model": '
    '"gpt-3.5-turbo-0125", "messages": [{"role": "system", "content": "You are an unhelpful assistant."},'
    '{"role": "user", "content": "Hello world!"}],"max_tokens": 1000}}\n'
)
