"""BatchLauncher adapters: start `python -m runner.batch` for one batch without waiting for it.

- `CloudRunBatchLauncher` (production): runs the batch Cloud Run job with per-batch arguments
  (`JobsClient.run_job` with `RunJobRequest.Overrides`; needs `run.jobs.runWithOverrides`), exactly
  what the nightly workflow's `googleapis.run.v2.projects.locations.jobs.run` step does.
- `LocalBatchLauncher` (the local stack, which cannot run Cloud Run jobs): a subprocess of the caller,
  in the caller's process group, so stopping the function's group stops its batches too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from jobs import tracing
from jobs.adapters.google_errors import CLIENT_ERRORS
from jobs.errors import DependencyUnavailable

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def batch_args(*, batch_id: str, input_uri: str, output_prefix: str) -> list[str]:
    """The arguments after `python -m runner.batch` (the job's command); `--traceparent` carries the current
    trace context (W3C), so that the runner's `batch` span joins the trace of the request that started it."""
    traceparent = tracing.inject().get("traceparent")
    return ["--input", input_uri, "--output", output_prefix, "--batch-id", batch_id,
            *(["--traceparent", traceparent] if traceparent else [])]


class CloudRunBatchLauncher:
    def __init__(self, *, project: str, region: str, job: str, client: Any | None = None) -> None:
        self._name = f"projects/{project}/locations/{region}/jobs/{job}"
        self._client = client

    def _jobs(self) -> Any:
        if self._client is None:  # created on first use, never at import
            from google.cloud import run_v2

            self._client = run_v2.JobsClient()
        return self._client

    def launch(self, *, batch_id: str, input_uri: str, output_prefix: str) -> str:
        from google.cloud import run_v2

        overrides = run_v2.RunJobRequest.Overrides(container_overrides=[
            run_v2.RunJobRequest.Overrides.ContainerOverride(
                args=batch_args(batch_id=batch_id, input_uri=input_uri, output_prefix=output_prefix)),
        ])
        try:
            operation = self._jobs().run_job(request=run_v2.RunJobRequest(name=self._name, overrides=overrides),
                                             timeout=30)
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the batch job could not be started") from err
        # The operation runs as long as the execution; its name is the handle (we never wait on it here).
        return str(operation.operation.name)


class LocalBatchLauncher:
    """At most `max_running` local runners at once (each loads a model: a burst of batches must not
    overload the machine); the others wait their turn, as executions wait for Cloud Run capacity."""

    def __init__(self, *, log_dir: str = "", max_running: int = 2, python: str = sys.executable,
                 cwd: Path = REPO) -> None:
        self._log_dir = Path(log_dir) if log_dir else None
        self._slots = threading.BoundedSemaphore(max(1, max_running))
        self._python = python
        self._cwd = cwd

    def launch(self, *, batch_id: str, input_uri: str, output_prefix: str) -> str:
        argv = [self._python, "-m", "runner.batch",
                *batch_args(batch_id=batch_id, input_uri=input_uri, output_prefix=output_prefix)]
        try:
            threading.Thread(target=self._run, args=(argv, batch_id), name=f"batch-{batch_id}", daemon=True).start()
        except RuntimeError as err:  # no more threads
            raise DependencyUnavailable("the batch runner could not be started") from err
        return f"local-{batch_id}"

    def _run(self, argv: list[str], batch_id: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(self._cwd)}
        with self._slots:
            try:
                if self._log_dir is not None:
                    self._log_dir.mkdir(parents=True, exist_ok=True)
                    with open(self._log_dir / f"batch-{batch_id}.log", "ab") as out:
                        proc = subprocess.Popen(argv, cwd=self._cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
                else:
                    proc = subprocess.Popen(argv, cwd=self._cwd, env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            except OSError:
                log.exception("could not start the local batch runner for %s", batch_id)
                return
            log.info("started local batch runner pid %d for %s", proc.pid, batch_id)
            proc.wait()  # also reaps it: no zombies in a long-lived function process
