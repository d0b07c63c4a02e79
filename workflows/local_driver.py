"""Run `workflows/nightly_batch.yaml` itself against the local stack, in the PyPI workflows-emulator:

    python -m workflows.local_driver [--state-dir .local] [--argument '{"batch_bucket": "llmq-batch"}']

Nothing of the workflow is re-implemented here: this module only gives the YAML its environment (the
stack's API URLs and key, the Cloud Storage emulator's URL) and runs it. The YAML talks HTTP only — the
platform's API (which creates `batches/{id}` and starts the batch runner through its launcher) and Cloud
Storage's JSON API — so the emulator can run it: it cannot run `googleapis.*` connectors (they call the
real Google endpoints with default credentials), nor OIDC auth (NotImplementedError), so production's
OIDC and OAuth2 branches of the YAML are the part it does not exercise.

The emulator (workflows-emulator 1.10.0) pins fastapi<0.112, whose starlette conflicts with this
project's, so it lives in a virtualenv of its own, `.local/workflows-emulator`, created on first use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = Path(__file__).resolve().with_name("nightly_batch.yaml")
EMULATOR_VERSION = "1.10.0"
EMULATOR_VENV = REPO / ".local" / "workflows-emulator"
log = logging.getLogger("workflows.local_driver")


class WorkflowFailed(Exception):
    """The execution ended with an error (the emulator exited non-zero)."""


def emulator(venv: Path = EMULATOR_VENV) -> Path:
    """The emulator's command, installing it into `venv` first unless this version is there (needs PyPI)."""
    command, stamp = venv / "bin" / "workflows-emulator", venv / ".installed-version"
    if not (command.exists() and stamp.is_file() and stamp.read_text() == EMULATOR_VERSION):
        log.info("installing workflows-emulator %s into %s", EMULATOR_VERSION, venv)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"workflows-emulator=={EMULATOR_VERSION}"],
                       check=True)
        stamp.write_text(EMULATOR_VERSION)  # written last: an interrupted install is redone
    return command


def workflow_env(stack_info: dict[str, Any], *, poll_seconds: float = 1) -> dict[str, str]:
    """What pulumi/llmq_infra/batch.py sets as the workflow's user_env_vars, for the local stack."""
    return {
        "LLMQ_BATCH_BUCKET": stack_info["batch_bucket"],
        "LLMQ_SUBMIT_URL": stack_info["submit_url"],
        "LLMQ_STATUS_URL": stack_info["status_url"],
        "LLMQ_API_KEY": stack_info.get("api_key") or "",
        "LLMQ_STORAGE_URL": stack_info["env"]["STORAGE_EMULATOR_HOST"],
        "LLMQ_BATCH_POLL_SECONDS": str(poll_seconds),
    }


def run_workflow(stack_info: dict[str, Any], argument: dict[str, Any], *, timeout: float = 1800,
                 log_file: Path | None = None, poll_seconds: float = 1) -> dict[str, Any]:
    """Execute the workflow's `main` with the Scheduler's argument; returns what it returns.
    Raises WorkflowFailed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "GOOGLE_"))}
    env.update(workflow_env(stack_info, poll_seconds=poll_seconds))
    env["GOOGLE_CLOUD_PROJECT_ID"] = stack_info["project"]
    argv = [str(emulator()), "--source", str(WORKFLOW), "--env-file", os.devnull, "--loglevel", "WARNING",
            "run", "--data", json.dumps(argument)]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if log_file is not None:
        with open(log_file, "a") as out:
            out.write(proc.stderr)
    if proc.returncode != 0:
        raise WorkflowFailed(f"the workflow failed (exit status {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.local_driver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local", help="the running stack's state dir")
    parser.add_argument("--argument", default="{}", help="the execution argument (JSON), as Scheduler sends it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s local_driver %(levelname)s %(message)s")
    info = json.loads((args.state_dir / "stack.json").read_text())
    argument = {"batch_bucket": info["batch_bucket"], **json.loads(args.argument)}
    started = time.monotonic()
    summary = run_workflow(info, argument)
    log.info("nightly run done in %.1f s", time.monotonic() - started)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
