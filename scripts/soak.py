"""Soak: N jobs through the local stack while the runner is killed and restarted at random moments.

    python -m scripts.soak [--jobs 2000] [--concurrency 16] [--kill-every 5-20]

Prints `submitted, succeeded, failed, lost, duplicated` and exits non-zero unless lost = 0 and
duplicated = 0. One Firestore query listener follows all the run's jobs (tagged by metadata), and
records every state each one passes through:
- lost: accepted (202) but not final when the run ends;
- duplicated: a job that reached `succeeded` more than once (two finishing writes), or whose GCS
  result differs from its document (two generations into two results).
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
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from google.cloud.firestore_v1.base_query import FieldFilter

from scripts.stack_client import FINAL, Stack, running_stack

REPO = Path(__file__).resolve().parents[1]


class RunFollower:
    """One query listener on all jobs of the run: the succeeded states each one went through."""

    def __init__(self, db: Any, run_id: str) -> None:
        self.final: dict[str, str] = {}
        self.succeeded_states: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.docs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        query = db.collection("jobs").where(filter=FieldFilter("metadata.soak", "==", run_id))
        self._watch = query.on_snapshot(self._on_snapshot)

    def _on_snapshot(self, _snapshots: list[Any], changes: list[Any], _read_time: Any) -> None:
        with self._lock:
            for change in changes:
                doc = change.document.to_dict()
                job_id = change.document.id
                self.docs[job_id] = doc
                if doc["status"] in FINAL:
                    self.final[job_id] = doc["status"]
                if doc["status"] == "succeeded":
                    self.succeeded_states[job_id].add((str(doc["finished_at"]), doc["output"] or ""))

    def count_final(self, ids: set[str]) -> int:
        with self._lock:
            return sum(1 for i in ids if i in self.final)

    def close(self) -> None:
        self._watch.unsubscribe()


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
    follower = RunFollower(db, run_id)
    accepted: set[str] = set()
    rejected = 0
    stop = threading.Event()
    kills: list[float] = []
    chaos = threading.Thread(target=killer, args=(stack, stop, *kill_every, kills), daemon=True)
    started = time.monotonic()
    chaos.start()
    try:
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(concurrency) as pool:
            def submit(i: int) -> str | None:
                body = {"prompt": f"soak {i}:", "max_tokens": 8 + i % 9, "metadata": {"soak": run_id}}
                for _ in range(5):  # a client retries 503s with its idempotency key
                    response = stack.submit(client, body, headers={"Idempotency-Key": f"{run_id}-{i}"})
                    if response.status_code in (200, 202):
                        return str(response.json()["id"])
                    if response.status_code != 503:
                        break
                return None

            for job_id in pool.map(submit, range(jobs)):
                if job_id is None:
                    rejected += 1
                else:
                    accepted.add(job_id)
        print(f"submitted {len(accepted)} in {time.monotonic() - started:.1f}s; waiting for them to finish", flush=True)
        deadline = time.monotonic() + timeout
        while follower.count_final(accepted) < len(accepted) and time.monotonic() < deadline:
            time.sleep(1)
            done = follower.count_final(accepted)
            print(f"  {done}/{len(accepted)} final after {time.monotonic() - started:.0f}s", end="\r", flush=True)
        print()
    finally:
        stop.set()
        chaos.join()
    elapsed = time.monotonic() - started

    bucket = stack.storage().bucket(stack.info["results_bucket"])
    duplicated = {i for i, states in follower.succeeded_states.items() if len(states) > 1}
    for job_id in [i for i in accepted if follower.final.get(i) == "succeeded"]:
        result = json.loads(bucket.blob(f"results/{job_id}.json").download_as_text())
        if result["choices"][0]["text"] != follower.docs[job_id]["output"]:
            duplicated.add(job_id)
    succeeded = sum(1 for i in accepted if follower.final.get(i) == "succeeded")
    failed = sum(1 for i in accepted if follower.final.get(i) in ("failed", "cancelled"))
    lost = len(accepted) - succeeded - failed
    follower.close()
    failures = defaultdict(int)
    for i in accepted:
        if follower.final.get(i) == "failed":
            failures[(follower.docs[i].get("error") or {}).get("code", "?")] += 1
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
    parser.add_argument("--kill-every", default="5-20", help="seconds between runner kills, LOW-HIGH")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the jobs after submitting")
    args = parser.parse_args()
    low, high = (float(x) for x in args.kill_every.split("-"))
    args.state_dir.mkdir(parents=True, exist_ok=True)
    with running_stack(args.state_dir.resolve()) as stack:
        code = run(stack, jobs=args.jobs, concurrency=args.concurrency, kill_every=(low, high), timeout=args.timeout)
    sys.exit(code)


if __name__ == "__main__":
    main()
