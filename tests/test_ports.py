"""Ports without a race (scripts/processes.py), in seconds and without emulators: a child serving a socket the
parent bound, a restarted child serving the same socket, emulator ports outside the ephemeral range and an
emulator started again on another port when its own was taken."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import processes
from scripts.local_stack import EMULATORS, LocalStack, StackConfig
from scripts.processes import ManagedProcess, PortInUse, free_port, listening_socket

REPO = Path(__file__).resolve().parents[1]

FUNCTION_SOURCE = '''
def hello(request):
    return "hello"
'''

# A Starlette app served by the runner's own `serve`, answering with the client's address.
RUNNER_CHILD = '''
import sys
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from runner.__main__ import serve

async def peer(request):
    return PlainTextResponse(request.client.host if request.client else "none")

serve(Starlette(routes=[Route("/", peer)]), host="127.0.0.1", port=0, fd=int(sys.argv[1]))
'''


@pytest.fixture()
def listener() -> Iterator[socket.socket]:
    sock = listening_socket()
    yield sock
    sock.close()


def _get(port: int) -> str:
    """GET / over a raw connection; the body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _read_all(conn).split(b"\r\n\r\n", 1)[1].decode()


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_free_ports_are_outside_the_ephemeral_range_free_and_distinct() -> None:
    low, high = processes.ephemeral_port_range()
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_free_port_lets_the_kernel_choose_when_every_port_is_ephemeral(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "ephemeral_port_range", lambda: (1024, 65535))
    assert 1024 <= free_port() <= 65535


def test_a_function_serves_the_parents_socket_and_a_restart_serves_it_again(
        tmp_path: Path, listener: socket.socket) -> None:
    source = tmp_path / "main.py"
    source.write_text(FUNCTION_SOURCE)
    fd, port = listener.fileno(), listener.getsockname()[1]
    function = ManagedProcess("function", [sys.executable, "-m", "scripts.serve_function", "--target", "hello",
                                           "--source", str(source), "--fd", str(fd)],
                              log_dir=tmp_path, cwd=REPO, pass_fds=[fd])
    function.start()
    try:
        function.wait_http(f"http://127.0.0.1:{port}/", timeout=30)
        assert _get(port) == "hello"
        os.kill(function.pid, signal.SIGKILL)  # as the fault tests kill the runner
        function.stop()  # as the stack's supervisor does before starting it again
        # Nothing serves the port now, yet it is still this stack's: a client connects (into the backlog of the
        # socket the parent keeps) and is answered by the restarted process, on the same port.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as waiting:
            waiting.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            function.start()
            assert _read_all(waiting).endswith(b"hello")
    finally:
        function.stop()


def test_the_runner_serves_the_parents_socket_as_tcp(tmp_path: Path, listener: socket.socket) -> None:
    fd, port = listener.fileno(), listener.getsockname()[1]
    runner = ManagedProcess("runner", [sys.executable, "-c", RUNNER_CHILD, str(fd)], log_dir=tmp_path, cwd=REPO,
                            pass_fds=[fd])
    runner.start()
    try:
        runner.wait_http(f"http://127.0.0.1:{port}/", timeout=30)
        assert _get(port) == "127.0.0.1"  # a TCP peer: uvicorn was given the socket with its own family
    finally:
        runner.stop()


@pytest.fixture()
def fake_emulators(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The stack's emulators replaced by `python -m http.server` on the same ports."""
    def emulator(self: LocalStack, name: str) -> ManagedProcess:
        argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.ports[name]),
                "--directory", str(tmp_path)]
        return ManagedProcess(f"{name}-emulator", argv, log_dir=self.logs,
                              env={processes.STACK_MARKER: str(self.config.state_dir)})

    monkeypatch.setattr(LocalStack, "_emulator", emulator)
    monkeypatch.setattr(LocalStack, "_emulator_ready_url", lambda self, name: f"http://127.0.0.1:{self.ports[name]}/")


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A port bound (not listening, so a probe is refused at once) by another socket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.mark.usefixtures("fake_emulators")
def test_an_emulator_whose_port_was_taken_starts_again_on_another(tmp_path: Path, taken_port: int) -> None:
    stack = LocalStack(StackConfig(state_dir=tmp_path))
    stack.ports["pubsub"] = taken_port  # as if taken between free_port() and the emulator's bind
    try:
        stack._start_emulators()
        assert stack.ports["pubsub"] != taken_port
        assert stack.emulator_env["PUBSUB_EMULATOR_HOST"] == f"127.0.0.1:{stack.ports['pubsub']}"
        for name in EMULATORS:
            stack.emulators[name].wait_http(f"http://127.0.0.1:{stack.ports[name]}/", timeout=5)
        assert "Address already in use" in (tmp_path / "logs" / "pubsub-emulator.log").read_text()
    finally:
        assert stack.stop() == 0


@pytest.mark.usefixtures("fake_emulators")
def test_an_emulator_on_a_port_asked_for_is_not_moved(tmp_path: Path, taken_port: int) -> None:
    stack = LocalStack(StackConfig(state_dir=tmp_path, ports={"pubsub": taken_port}))
    try:
        with pytest.raises(PortInUse):
            stack._start_emulators()
    finally:
        assert stack.stop() == 0
