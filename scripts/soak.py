"""Soak: N jobs through the local stack while the runner is killed and restarted at random moments.

    python -m scripts.soak [--jobs 2000] [--concurrency 16] [--kill-every 40-80]

Prints `submitted, succeeded, failed, lost, duplicated` and exits non-zero unless lost = 0 and
duplicated = 0.
- lost: accepted (202) but not final when the run ends;
- duplicated: a job whose `succeeded` write landed more than once (the runner logs each finishing
  write that passed its lease check), or whose GCS result differs from its document (two
  generations into two results).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scripts.stack_client import FINAL, Stack, running_stack

REPO = Path(__file__).resolve().parents[1]


def final_states(db: Any, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The current documents, read in batches (a listener on thousands of documents would cost the
    2-core machine more than the pipeline under test)."""
    docs: dict[str, dict[str, Any]] = {}
    for i in range(0, len(job_ids), 300):
        refs = [db.collection("jobs").document(j) for j in job_ids[i:i + 300]]
        for snapshot in db.get_all(refs):
            if snapshot.exists:
                docs[snapshot.id] = snapshot.to_dict()
    return docs


def finishing_writes(log_path: Path) -> Counter[str]:
    """Per job, how many `succeeded` writes landed: the runner logs "finished" only after its
    conditional finish write succeeded (its log spans every restart)."""
    counts: Counter[str] = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"message": "finished"' in line:
            counts[json.loads(line)["job_id"]] += 1
    return counts


def killer(stack: Stack, stop: threading.Event, low: float, high: float, kills: list[float]) -> None:
    rng = random.Random()
    while not stop.wait(rng.uniform(low, high)):
        try:
            os.kill(stack.pid("runner"), signal.SIGKILL)
            kills.append(time.monotonic())
            print(f"  killed the runner ({len(kills)})", flush=True)
        except (ProcessLookupError, KeyError, FileNotFoundError, json.JSONDecodeError):
            pass  # between a death and its restart


def run(stack: Stack, *, jobs: int, concurrency: int, kill_every: tuple[float, float], timeout: float) -> int:
    run_id = uuid.uuid4().hex[:12]
    db = stack.firestore()
    accepted: list[str] = []
    rejected = 0
    stop = threading.Event()
    kills: list[float] = []
    chaos = threading.Thread(target=killer, args=(stack, stop, *kill_every, kills), daemon=True)
    started = time.monotonic()
    chaos.start()
    try:
        with stack.http(timeout=60) as client, ThreadPoolExecutor(concurrency) as pool:
            def submit(i: int) -> str | None:
                body = {"prompt": f"soak {i}:", "max_tokens": 8 + i % 9, "metadata": {"soak": run_id}}
                # A well-behaved client: retries 503s with its idempotency key, and waits out 429s
                # (the tenant's submission quota) for as long as Retry-After says.
                for _ in range(60):
                    response = stack.submit(client, body, headers={"Idempotency-Key": f"{run_id}-{i}"})
                    if response.status_code in (200, 202):
                        return str(response.json()["id"])
                    if response.status_code not in (429, 503):
                        break
                    time.sleep(min(30, int(response.headers.get("Retry-After", "1"))))
                return None

            for job_id in pool.map(submit, range(jobs)):
                if job_id is None:
                    rejected += 1
                else:
                    accepted.append(job_id)
        print(f"submitted {len(accepted)} in {time.monotonic() - started:.1f}s; waiting for them to finish", flush=True)
        deadline = time.monotonic() + timeout
        docs = final_states(db, accepted)
        while sum(d["status"] in FINAL for d in docs.values()) < len(accepted) and time.monotonic() < deadline:
            stop.wait(3)
            docs = final_states(db, accepted)
            done = sum(d["status"] in FINAL for d in docs.values())
            print(f"  {done}/{len(accepted)} final after {time.monotonic() - started:.0f}s", flush=True)
    finally:
        stop.set()
        chaos.join()
    elapsed = time.monotonic() - started

    status = {job_id: docs.get(job_id, {}).get("status") for job_id in accepted}
    writes = finishing_writes(Path(stack.info["logs"]) / "runner.log")
    duplicated = {job_id for job_id in accepted if writes[job_id] > 1}
    bucket = stack.storage().bucket(stack.info["results_bucket"])
    for job_id in (j for j in accepted if status[j] == "succeeded"):
        result = json.loads(bucket.blob(f"results/{job_id}.json").download_as_text())
        if result["choices"][0]["text"] != docs[job_id]["output"]:
            duplicated.add(job_id)  # two generations, two different results
    succeeded = sum(1 for s in status.values() if s == "succeeded")
    failed = sum(1 for s in status.values() if s in ("failed", "cancelled"))
    lost = len(accepted) - succeeded - failed
    failures = Counter((docs[j].get("error") or {}).get("code", "?") for j in accepted if status[j] == "failed")
    print(f"submitted={len(accepted)} rejected={rejected} succeeded={succeeded} failed={failed} "
          f"lost={lost} duplicated={len(duplicated)}")
    print(f"runner kills={len(kills)} elapsed={elapsed:.1f}s throughput={succeeded / elapsed:.1f} jobs/s "
          f"failures by code={dict(failures)}")
    return 0 if lost == 0 and not duplicated else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    # A vLLM runner takes ~30 s to come back here: kills every 10-30 s left it restarting most of the time
    # (712 of 2000 jobs final after 421 s), which tests the restart, not the delivery semantics.
    parser.add_argument("--kill-every", default="40-80", help="seconds between runner kills, LOW-HIGH")
    parser.add_argument("--lease-seconds", default="10", help="the runner's lease, if the soak starts the stack")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the jobs after submitting")
    args = parser.parse_args()
    low, high = (float(x) for x in args.kill_every.split("-"))
    args.state_dir.mkdir(parents=True, exist_ok=True)
    with running_stack(args.state_dir.resolve(), "--runner-env", f"LLMQ_LEASE_SECONDS={args.lease_seconds}") as stack:
        code = run(stack, jobs=args.jobs, concurrency=args.concurrency, kill_every=(low, high), timeout=args.timeout)
    sys.exit(code)


if __name__ == "__main__":
    main()
