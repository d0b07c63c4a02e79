"""Run the nightly batch workflow's steps against the local stack:

    python -m workflows.local_driver [--state-dir .local] [--argument '{"batch_bucket": "llmq-batch"}']

It follows `workflows/nightly_batch.yaml` step by step (`MIRRORED_STEPS` names them; tests/test_workflow.py
checks they match the YAML), with each `googleapis.*` connector call done by the matching client call on
the emulators, and the Cloud Run job run as `python -m runner.batch <the same args>`, waited for like the
`jobs.run` connector waits for the execution.

Why not the PyPI `workflows-emulator` (1.10.0, checked): it requires fastapi<0.112, whose starlette<0.38
conflicts with this project's starlette==1.10.0, so it cannot join requirements.txt; and its connector
steps call the real Google endpoints (the discovery documents' rootUrl, google.auth.default()
credentials) with no way to point them at the emulators, send only the URL path parameters (the
`prefix`/`pageToken` of objects.list are dropped) and do not wait for long-running operations
(jobs.run). What it would add — evaluating the `${...}` expressions — is mirrored here in Python.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = Path(__file__).resolve().with_name("nightly_batch.yaml")
CONCURRENCY_LIMIT = 4  # the YAML's run_all.parallel.concurrency_limit
JOB_TIMEOUT_SECONDS = 14400  # the YAML's connector_params.timeout for jobs.run
MIRRORED_STEPS = {
    "main": ["init", "list_inbox", "collect", "next_page", "run_all", "tally", "count", "summarize"],
    "process_file": ["ids", "work", "choose_destination", "move", "report"],
}
log = logging.getLogger("workflows.local_driver")


class JobFailed(Exception):
    """The batch job's execution failed (the jobs.run connector raises)."""


@dataclass
class LocalCloud:
    """The connectors' targets: the stack's emulators, and the Cloud Run job as a local command."""

    project: str
    storage: Any  # google.cloud.storage.Client on the GCS emulator
    firestore: Any  # google.cloud.firestore.Client on the Firestore emulator
    job_env: dict[str, str]  # the job's environment (the stack's LLMQ_* settings and emulator hosts)
    job_log_dir: Path | None = None

    def run_job(self, args: list[str], *, timeout: float = JOB_TIMEOUT_SECONDS) -> None:
        """googleapis.run.v2.projects.locations.jobs.run with containerOverrides args: runs the job's
        command and waits for it. Raises JobFailed if the execution fails."""
        argv = [sys.executable, "-m", "runner.batch", *args]
        out: Any = subprocess.DEVNULL
        if self.job_log_dir is not None:
            self.job_log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.job_log_dir / f"nightly-{args[-1]}.log", "ab")  # noqa: SIM115 - closed below
        try:
            proc = subprocess.run(argv, cwd=REPO, env=self.job_env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise JobFailed(f"the batch job ran past {timeout:.0f} s") from err
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        if proc.returncode != 0:
            raise JobFailed(f"the batch job's execution failed (exit status {proc.returncode})")


def workflow_steps(path: Path = WORKFLOW) -> dict[str, list[str]]:
    """The top-level step names of each (sub)workflow in the YAML."""
    import yaml

    definition = yaml.safe_load(path.read_text())
    return {name: [next(iter(step)) for step in body["steps"]] for name, body in definition.items()}


def run_workflow(cloud: LocalCloud, argument: dict[str, Any] | None = None, *,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """Execute `main` with the Scheduler's argument; returns what the workflow returns."""
    env = env if env is not None else dict(os.environ)
    # init
    argument = argument or {}
    project = cloud.project
    region = argument.get("region") or env.get("LLMQ_REGION") or "local"
    bucket = argument.get("batch_bucket") or env.get("LLMQ_BATCH_BUCKET")
    job = argument.get("job") or env.get("LLMQ_BATCH_JOB") or "llmq-batch"
    database = env.get("LLMQ_DATABASE") or "(default)"
    if not bucket:
        raise ValueError("no batch bucket: pass batch_bucket or set LLMQ_BATCH_BUCKET")
    files: list[dict[str, Any]] = []
    page_token: str | None = None
    while True:
        # list_inbox: googleapis.storage.v1.objects.list(bucket, prefix="inbox/", pageToken)
        listing = cloud.storage.list_blobs(bucket, prefix="inbox/", page_token=page_token, page_size=1000)
        page: Any = next(listing.pages, [])
        # collect: keep objects whose name does not end in "/"
        files.extend({"name": blob.name, "generation": str(blob.generation)}
                     for blob in page if not blob.name.endswith("/"))
        # next_page
        page_token = listing.next_page_token
        if not page_token:
            break
    # run_all: parallel for, at most CONCURRENCY_LIMIT at once, results shared
    with ThreadPoolExecutor(max_workers=CONCURRENCY_LIMIT) as pool:
        results = list(pool.map(lambda file: process_file(cloud, project=project, region=region, job=job,
                                                          bucket=bucket, database=database, file=file), files))
    # tally, count
    counted = {"completed": 0, "failed": 0, "cancelled": 0}
    for r in results:
        counted[r["status"] if r["status"] in ("completed", "cancelled") else "failed"] += 1
    # summarize
    return {"files": len(files), **counted, "results": results}


def process_file(cloud: LocalCloud, *, project: str, region: str, job: str, bucket: str, database: str,
                 file: dict[str, Any], now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> dict[str, Any]:
    """One inbox object → one batch. Never raises: a failure is a result with status "failed"."""
    from google.api_core import exceptions as gexc

    from jobs.batches import nightly_batch_id

    # ids
    name = file["name"][len("inbox/"):]
    batch_id = nightly_batch_id(bucket, file["name"], file["generation"])
    input_uri = f"gs://{bucket}/{file['name']}"
    output_prefix = f"gs://{bucket}/outbox/{batch_id}/"
    output_uri, error_uri = output_prefix + "output.jsonl", output_prefix + "errors.jsonl"
    doc = cloud.firestore.collection("batches").document(batch_id)
    started = now()
    status, counts, problem = "failed", None, None
    # work
    try:
        try:  # create_batch: documents.createDocument; 409 → resume the existing batch
            doc.create({"status": "validating", "source": "nightly", "tenant": "public", "input_uri": input_uri,
                        "output_uri": output_uri, "error_uri": error_uri, "created_at": started,
                        "updated_at": started, "expire_at": started + timedelta(days=30)})
        except gexc.Conflict:
            pass
        # run_job: jobs.run with containerOverrides args, waited for
        cloud.run_job(["--input", input_uri, "--output", output_prefix, "--batch-id", batch_id])
        # read_batch, outcome
        snapshot = doc.get().to_dict() or {}
        status = snapshot["status"]
        request_counts = snapshot.get("request_counts") or {}
        counts = {k: int(request_counts.get(k, 0)) for k in ("total", "completed", "failed")}
    except Exception as err:  # noqa: BLE001 - the YAML's except catches everything, too
        problem = str(err) or "the batch job failed"
        try:  # mark_failed: documents.patch status/error/failed_at/updated_at
            moment = now()
            doc.update({"status": "failed", "error": {"code": "job_failed", "message": problem},
                        "failed_at": moment, "updated_at": moment})
        except Exception:  # noqa: BLE001
            problem += f" (and batches/{batch_id} could not be marked failed)"
        # report_failure: left in inbox/ for the next run
        return {"file": name, "batch_id": batch_id, "status": "failed", "error": problem,
                "output_uri": output_uri, "error_uri": error_uri}
    # choose_destination
    destination = ("failed/" if status == "failed" else "processed/") + name
    # move: objects.copy (this generation), then objects.delete if the generation still matches
    try:
        source_bucket = cloud.storage.bucket(bucket)
        source = source_bucket.blob(file["name"], generation=int(file["generation"]))
        source_bucket.copy_blob(source, source_bucket, destination, source_generation=int(file["generation"]))
        source_bucket.blob(file["name"]).delete(if_generation_match=int(file["generation"]))
    except Exception as err:  # noqa: BLE001
        problem = f"the input could not be moved to {destination} - {err}"
    # report
    return {"file": name, "batch_id": batch_id, "status": status, "request_counts": counts,
            "moved_to": destination, "error": problem, "output_uri": output_uri, "error_uri": error_uri}


def local_cloud(stack_info: dict[str, Any], *, log_dir: Path | None = None) -> LocalCloud:
    """Clients for a running local stack (from its stack.json)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore, storage

    os.environ.update(stack_info["env"])
    job_env = {**os.environ, **stack_info["env"], **stack_info.get("settings_env", {}), "PYTHONPATH": str(REPO)}
    return LocalCloud(project=stack_info["project"],
                      storage=storage.Client(project=stack_info["project"], credentials=AnonymousCredentials()),
                      firestore=firestore.Client(project=stack_info["project"]), job_env=job_env,
                      job_log_dir=log_dir)


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
    summary = run_workflow(local_cloud(info, log_dir=Path(info["logs"])), argument,
                           env={**os.environ, **info.get("settings_env", {})})
    log.info("nightly run done in %.1f s", time.monotonic() - started)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
