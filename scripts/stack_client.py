"""A client of a running local stack: find it from stack.json, call its HTTP API, and watch job
documents with Firestore listeners. Used by the demo, the tests and the load scripts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import psutil

from scripts.local_stack import LEFTOVER_EXIT_CODE
from scripts.processes import marked_processes

FINAL = {"succeeded", "failed", "cancelled"}
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stack:
    info: dict[str, Any]
    state_dir: Path

    @classmethod
    def load(cls, state_dir: Path) -> Stack:
        return cls(json.loads((state_dir / "stack.json").read_text()), state_dir)

    def pid(self, component: str) -> int:
        """The component's current pid (re-read: the stack rewrites it when it restarts one)."""
        return int(json.loads((self.state_dir / "stack.json").read_text())["pids"][component])

    @property
    def project(self) -> str:
        return str(self.info["project"])

    @contextmanager
    def emulator_env(self) -> Iterator[None]:
        """Point this process's Google clients at the stack's emulators."""
        saved = {k: os.environ.get(k) for k in self.info["env"]}
        os.environ.update(self.info["env"])
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def firestore(self) -> Any:
        from google.cloud import firestore

        os.environ.update(self.info["env"])
        return firestore.Client(project=self.project)

    def storage(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage  # type: ignore[attr-defined]  # no py.typed

        os.environ.update(self.info["env"])
        return storage.Client(project=self.project, credentials=AnonymousCredentials())

    def http(self, timeout: float = 30.0, *, api_key: str | None = None) -> httpx.Client:
        """An HTTP client that sends the stack's API key (or the one given) with every request."""
        key = api_key if api_key is not None else self.info.get("api_key")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(timeout=timeout, headers=headers)

    def submit(self, client: httpx.Client, body: Any, **kwargs: Any) -> httpx.Response:
        return client.post(f"{self.info['submit_url']}/v1/jobs", json=body, **kwargs)

    def job(self, client: httpx.Client, job_id: str, **params: Any) -> httpx.Response:
        """GET the job; with `wait`, the request may take that long, so the read timeout covers it."""
        wait = params.get("wait")
        timeout = (float(wait) + 30 if isinstance(wait, (int, float)) and not isinstance(wait, bool)
                   else httpx.USE_CLIENT_DEFAULT)
        return client.get(f"{self.info['status_url']}/v1/jobs/{job_id}", params=params, timeout=timeout)


_RECHECK_SECONDS = 10.0


class JobWatcher:
    """Listens to a set of job documents and records every state seen, with arrival times."""

    def __init__(self, db: Any, job_ids: Iterable[str] = (), *,
                 on_change: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self._db = db
        self._on_change = on_change
        self.history: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._all_final = threading.Event()
        self._watches: list[Any] = []
        for job_id in job_ids:
            self.add(job_id)

    def add(self, job_id: str) -> None:
        """Watch one more job (right after submitting it, to see it queued)."""
        with self._lock:
            self.history[job_id] = []
            self._all_final.clear()
        self._watches.append(self._db.collection("jobs").document(job_id).on_snapshot(self._callback))

    def _callback(self, snapshots: list[Any], _changes: Any, _read_time: Any) -> None:
        now = time.monotonic()
        with self._lock:
            for snapshot in snapshots:
                if not snapshot.exists:
                    continue
                doc = snapshot.to_dict()
                events = self.history[snapshot.id]
                if not events or events[-1][1] != doc:
                    events.append((now, doc))
                    if self._on_change:
                        self._on_change(snapshot.id, doc)
            if all(h and h[-1][1]["status"] in FINAL for h in self.history.values()):
                self._all_final.set()

    def wait(self, timeout: float) -> bool:
        """True once every job was seen final. The emulator's listeners can miss a change under load (a
        full test run once saw a job end that its listener never reported), so the documents not yet seen
        final are also read now and then, as the API's `?wait` does; such a read is recorded like an event."""
        deadline = time.monotonic() + timeout
        while not self._all_final.wait(max(0.0, min(_RECHECK_SECONDS, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return False
            with self._lock:
                pending = [job_id for job_id, h in self.history.items() if not h or h[-1][1]["status"] not in FINAL]
            for job_id in pending:
                snapshot = self._db.collection("jobs").document(job_id).get()
                if snapshot.exists and snapshot.to_dict()["status"] in FINAL:
                    self._callback([snapshot], None, None)
        return True

    def latest(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            events = self.history[job_id]
            return events[-1][1] if events else None

    def statuses(self, job_id: str) -> list[str]:
        with self._lock:
            seen: list[str] = []
            for _, doc in self.history[job_id]:
                if not seen or seen[-1] != doc["status"]:
                    seen.append(doc["status"])
            return seen

    def close(self) -> None:
        for watch in self._watches:
            watch.unsubscribe()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@contextmanager
def started_stack(state_dir: Path, *args: str, timeout: float = 420) -> Iterator[Stack]:
    """Start `scripts.local_stack up` in state_dir (its own process group), wait for stack.json,
    and stop the whole stack afterwards. Raises RuntimeError if it does not come up."""
    state = state_dir / "stack.json"
    state.unlink(missing_ok=True)
    out_path = state_dir / "local_stack.out"
    started = time.monotonic()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "scripts.local_stack", "up", "--state-dir", str(state_dir), *args],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            while not state.exists():
                if proc.poll() is not None or time.monotonic() - started > timeout:
                    raise RuntimeError(f"the local stack did not start:\n{out_path.read_text()[-4000:]}")
                time.sleep(0.2)
            yield Stack.load(state_dir)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            _check_nothing_left(state_dir, proc.returncode, out_path)


def _check_nothing_left(state_dir: Path, returncode: int | None, out_path: Path) -> None:
    """No process of the stack may outlive it (vLLM's engine processes included): raise if one did."""
    left = marked_processes(str(state_dir))
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    if left or returncode == LEFTOVER_EXIT_CODE:
        names = ", ".join(f"{p.pid}" for p in left) or "see its log"
        raise RuntimeError(f"processes outlived the local stack ({names}):\n{out_path.read_text()[-2000:]}")


@contextmanager
def running_stack(state_dir: Path, *args: str) -> Iterator[Stack]:
    """The stack already running in state_dir, or a new one (started with `args`) for the block."""
    state = state_dir / "stack.json"
    if state.exists() and all(_alive(pid) for pid in json.loads(state.read_text())["pids"].values()):
        print(f"using the running stack ({state})", flush=True)
        yield Stack.load(state_dir)
        return
    print("starting the local stack (emulators, functions, runner)...", flush=True)
    started = time.monotonic()
    with started_stack(state_dir, *args) as stack:
        print(f"stack ready in {time.monotonic() - started:.1f}s", flush=True)
        yield stack
