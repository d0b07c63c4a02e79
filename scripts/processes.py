"""Child processes for the local stack and the tests: each in its own process group (the
emulators' Java children outlive `gcloud`), ready when an HTTP probe answers, stopped as a group.

Ports, race-free: a port picked free and bound later by another process can be taken in between, and
outbound connections (the emulators', vLLM's) take their local ports from the kernel's ephemeral range,
where bind(0) also picks. So a server we start ourselves gets a socket bound and listening here
(`listening_socket`), inherited by the child (`pass_fds`): nothing to race, and a restarted child serves the
same still-open socket (connections made meanwhile wait in its backlog). A server that only takes a port
number (the emulators) gets one outside the ephemeral range (`free_port`), which no outbound connection can
take, and is started again on another if the port was taken anyway (`PortInUse`)."""

from __future__ import annotations

import os
import random
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


# Linux's default, where /proc cannot be read.
_DEFAULT_EPHEMERAL = (32768, 60999)
# The listen backlog of the sockets made here: 500 clients connecting at once overflowed werkzeug's 128, and a
# connection dropped from a full backlog surfaces at the client as a read error (25 of 2,000 submissions).
LISTEN_BACKLOG = 4096
_handed_out: set[int] = set()  # free_port never returns a port twice in one process


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outbound connections (and of bind to port 0)."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def _is_free(port: int) -> bool:
    with socket.socket() as s:  # no SO_REUSEADDR: a port still in TIME_WAIT counts as taken too
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free now, for a server that binds it itself later. Chosen outside the ephemeral range, so only a
    server binding that very port could take it meanwhile (see PortInUse); there is no such range free when the
    ephemeral one spans every port, and then the kernel picks one."""
    low, high = ephemeral_port_range()
    candidates = [*range(10000, min(low, 65536)), *range(max(high + 1, 10000), 65536)]
    for _ in range(200 if candidates else 0):
        port = random.choice(candidates)
        if port not in _handed_out and _is_free(port):
            _handed_out.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_socket(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound and listening now, for a child to serve (ManagedProcess(pass_fds=[sock.fileno()]))."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a fixed port may still be in TIME_WAIT
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class PortInUse(RuntimeError):
    """A process could not bind its port (someone took it after it was chosen)."""


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
                 cwd: Path | None = None, pass_fds: Sequence[int] = ()) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.cwd = cwd
        self.pass_fds = tuple(pass_fds)  # inherited by every start (a listening socket the parent keeps open)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this start's output begins in the log

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True, pass_fds=self.pass_fds,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(self, url: str, *, timeout: float, expect: int | None = 200) -> None:
        """Wait until GET url answers `expect` (any status if None). Raises RuntimeError if the
        process exits first, PortInUse as soon as it says it could not bind (the Pub/Sub and Storage
        emulators then keep running without serving)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Address already in use" in self.output():
                raise PortInUse(f"{self.name} could not bind its port; see {self.log_path}:\n{self.tail()}")
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

    def output(self) -> str:
        """What the process wrote since its last start."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
