"""Operator commands that drive the repository's own scripts (`llmq keys`, `llmq stack`, `llmq top`,
`llmq trace`): they run `python -m scripts.api_keys`, `scripts.local_stack up`, `scripts.top` and
`scripts.trace` from the repository, as separate processes, so this package imports nothing of the
platform's (jobs/, scripts/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmq.config import load_stack

PID_FILE = "llmq-stack.pid"


def _python(repo: Path) -> str:
    """The repository's environment when it has one (.venv), else this interpreter."""
    venv = repo / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def api_keys(repo: Path, args: list[str], *, project: str | None, state_dir: Path | None) -> int:
    """Run scripts.api_keys with `args`; its output goes straight to this process's. Returns its exit status."""
    extra = (["--project", project] if project else []) + (["--state-dir", str(state_dir)] if state_dir else [])
    return subprocess.call([_python(repo), "-m", "scripts.api_keys", *extra, *args], cwd=repo)


def script(repo: Path, module: str, args: list[str]) -> int:
    """Run `python -m scripts.<module> args` from the repository, attached to this terminal; its exit status."""
    return subprocess.call([_python(repo), "-m", f"scripts.{module}", *args], cwd=repo)


def _state_dir(repo: Path, state_dir: Path | None) -> Path:
    return (state_dir or repo / ".local").resolve()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stack_status(repo: Path, state_dir: Path | None) -> dict[str, Any]:
    folder = _state_dir(repo, state_dir)
    info = load_stack(folder / "stack.json")
    if info is None:
        return {"running": False, "state_dir": str(folder)}
    components = {name: _alive(int(pid)) for name, pid in dict(info.get("pids", {})).items()}
    return {"running": all(components.values()), "state_dir": str(folder), "api_url": info.get("api_url"),
            "model": info.get("model"), "components": components}


def stack_up(repo: Path, state_dir: Path | None, args: list[str], *, timeout: float,
             on_wait: Callable[[], None]) -> dict[str, Any]:
    """Start `scripts.local_stack up` detached (its own session), wait for its stack.json, and return it.
    Returns the running stack's if one already serves. Raises RuntimeError if it does not come up."""
    folder = _state_dir(repo, state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if stack_status(repo, folder)["running"]:
        info = load_stack(folder / "stack.json")
        assert info is not None
        return info
    state = folder / "stack.json"
    state.unlink(missing_ok=True)
    log_path = folder / "local_stack.out"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([_python(repo), "-m", "scripts.local_stack", "up", "--state-dir", str(folder), *args],
                                cwd=repo, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    (folder / PID_FILE).write_text(str(proc.pid))
    on_wait()
    started = time.monotonic()
    while (info := load_stack(state)) is None:
        if proc.poll() is not None or time.monotonic() - started > timeout:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            raise RuntimeError(f"the local stack did not start; its log ({log_path}) ends:\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return info


def stack_down(repo: Path, state_dir: Path | None, *, timeout: float = 120) -> bool:
    """SIGTERM the stack started by stack_up (it stops every process it started) and wait for it to exit.
    False when there was none."""
    folder = _state_dir(repo, state_dir)
    pid_file = folder / PID_FILE
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    if not _alive(pid):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)  # the supervisor stops its components' groups itself
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the local stack (pid {pid}) did not stop within {timeout:g}s")
        time.sleep(0.2)
    pid_file.unlink(missing_ok=True)
    return True


