"""Child processes for the local stack and the tests: each in its own process group (the
emulators' Java children outlive `gcloud`), ready when an HTTP probe answers, stopped as a group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

# Every process a local stack starts carries this variable (its state dir), and so do their children, which
# inherit it: vLLM's engine-core and worker processes, the emulators' JVMs. That finds what outlived a stop.
STACK_MARKER = "LLMQ_STACK_DIR"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _live_processes(select: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    """Processes for which `select` holds, zombies excluded (they use nothing) and vanished ones skipped."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and select(proc):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return found


def marked_processes(marker_value: str) -> list[psutil.Process]:
    """Live processes whose environment has STACK_MARKER=marker_value."""
    return _live_processes(lambda proc: proc.environ().get(STACK_MARKER) == marker_value)


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of one process group (a killed leader's children keep its group)."""
    return _live_processes(lambda proc: os.getpgid(proc.pid) == pgid)


class ManagedProcess:
    """A command started in a new session, with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], *, log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(self, url: str, *, timeout: float, expect: int | None = 200) -> None:
        """Wait until GET url answers `expect` (any status if None). Raises RuntimeError if the
        process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited while starting; see {self.log_path}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if expect is None or response.status == expect:
                        return
            except urllib.error.HTTPError as err:
                if expect is None or err.code == expect:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}:\n{self.tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                # The leader is gone; make sure no child of the group lingers.
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
