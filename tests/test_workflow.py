"""The nightly batch workflow: `workflows/nightly_batch.yaml` run step for step by
`workflows/local_driver.py` against the local stack (each test in a bucket of its own)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.stack_client import Stack
from tests.batch_helpers import chat_line, completion_line, jsonl
from workflows.local_driver import (
    CONCURRENCY_LIMIT,
    JOB_TIMEOUT_SECONDS,
    MIRRORED_STEPS,
    WORKFLOW,
    LocalCloud,
    local_cloud,
    run_workflow,
    workflow_steps,
)


@pytest.fixture()
def nightly(stack: Stack, tmp_path: Path) -> Iterator[tuple[LocalCloud, Any]]:
    """A LocalCloud on the stack, and a fresh batch bucket for this test."""
    cloud = local_cloud(stack.info, log_dir=tmp_path)
    bucket = cloud.storage.create_bucket(f"nightly-{uuid.uuid4().hex[:12]}")
    yield cloud, bucket


def _names(bucket: Any) -> set[str]:
    return {blob.name for blob in bucket.client.list_blobs(bucket.name)}


def _lines(bucket: Any, uri: str) -> list[dict[str, Any]]:
    name = uri.split("/", 3)[3]
    return [json.loads(line) for line in bucket.blob(name).download_as_text().splitlines() if line]


def test_the_driver_mirrors_the_workflow_definition() -> None:
    assert workflow_steps() == MIRRORED_STEPS
    definition = yaml.safe_load(WORKFLOW.read_text())
    steps = {next(iter(s)): s[next(iter(s))] for s in definition["main"]["steps"]}
    assert steps["list_inbox"]["call"] == "googleapis.storage.v1.objects.list"
    assert steps["list_inbox"]["args"]["prefix"] == "inbox/"
    assert steps["run_all"]["parallel"]["concurrency_limit"] == CONCURRENCY_LIMIT
    work = next(s["work"] for s in definition["process_file"]["steps"] if "work" in s)
    run_job = next(s["run_job"] for s in work["try"]["steps"] if "run_job" in s)
    assert run_job["call"] == "googleapis.run.v2.projects.locations.jobs.run"
    (override,) = run_job["args"]["body"]["overrides"]["containerOverrides"]
    assert override["args"] == ["--input", "${input_uri}", "--output", "${output_prefix}", "--batch-id", "${batch_id}"]
    assert run_job["args"]["connector_params"]["timeout"] == JOB_TIMEOUT_SECONDS


def test_nightly_run_processes_two_inbox_files_one_bad(stack: Stack, db: Any,
                                                       nightly: tuple[LocalCloud, Any]) -> None:
    cloud, bucket = nightly
    good = [chat_line("g0", "Hello?"), completion_line("g1", "Once"), completion_line("g2", "Twice")]
    bucket.blob("inbox/good.jsonl").upload_from_string(jsonl(good))
    bucket.blob("inbox/bad.jsonl").upload_from_string("this is not JSONL\n[1, 2, 3]\n")
    bucket.blob("inbox/").upload_from_string(b"")  # a console "folder": not a batch file

    summary = run_workflow(cloud, {"batch_bucket": bucket.name})

    assert (summary["files"], summary["completed"], summary["failed"], summary["cancelled"]) == (2, 1, 1, 0)
    results = {r["file"]: r for r in summary["results"]}
    ok, bad = results["good.jsonl"], results["bad.jsonl"]
    assert ok["status"] == "completed" and ok["error"] is None
    assert ok["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert ok["moved_to"] == "processed/good.jsonl"
    assert sorted(o["custom_id"] for o in _lines(bucket, ok["output_uri"])) == ["g0", "g1", "g2"]
    assert bad["status"] == "failed" and bad["moved_to"] == "failed/bad.jsonl"
    assert bad["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    assert [(e["error"]["code"], e["error"]["line"]) for e in _lines(bucket, bad["error_uri"])] == [
        ("invalid_json", 1), ("invalid_json", 2)]
    assert _names(bucket) >= {"processed/good.jsonl", "failed/bad.jsonl"}
    assert not {n for n in _names(bucket) if n.startswith("inbox/") and n != "inbox/"}
    for result in (ok, bad):
        doc = db.collection("batches").document(result["batch_id"]).get().to_dict()
        assert doc["status"] == result["status"] and doc["source"] == "nightly"
        assert doc["output_uri"] == result["output_uri"]
    assert db.collection("batches").document(bad["batch_id"]).get().to_dict()["error"]["code"] == "invalid_input_file"

    # The next night finds an empty inbox.
    assert run_workflow(cloud, {"batch_bucket": bucket.name})["files"] == 0


def test_a_failed_job_is_recorded_and_resumed_the_next_night(stack: Stack, db: Any,
                                                              nightly: tuple[LocalCloud, Any]) -> None:
    cloud, bucket = nightly
    bucket.blob("inbox/night.jsonl").upload_from_string(jsonl([completion_line(f"n{i}", f"N{i}") for i in range(3)]))
    broken = LocalCloud(project=cloud.project, storage=cloud.storage, firestore=cloud.firestore,
                        job_env={**cloud.job_env, "LLMQ_MODEL_PATH": "/nonexistent/model"},
                        job_log_dir=cloud.job_log_dir)

    first = run_workflow(broken, {"batch_bucket": bucket.name})
    (result,) = first["results"]
    assert first["failed"] == 1 and result["status"] == "failed" and "exit status" in result["error"]
    doc = db.collection("batches").document(result["batch_id"]).get().to_dict()
    assert doc["status"] == "failed" and doc["error"]["code"] == "job_failed"
    assert "inbox/night.jsonl" in _names(bucket)  # left for the next run

    second = run_workflow(cloud, {"batch_bucket": bucket.name})
    (again,) = second["results"]
    assert again["batch_id"] == result["batch_id"]  # the same object version: the same batch, resumed
    assert again["status"] == "completed" and again["request_counts"]["completed"] == 3
    assert "processed/night.jsonl" in _names(bucket) and "inbox/night.jsonl" not in _names(bucket)
