"""The nightly batch workflow: `workflows/nightly_batch.yaml` itself, run by the PyPI workflows-emulator
(in a virtualenv of its own, workflows/local_driver.py) against the local stack's API and Cloud Storage.
The tests share the stack's batch bucket (the API serves only that one), so each starts and ends with an
empty inbox/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.stack_client import Stack
from tests.batch_helpers import DocWatcher, chat_line, completion_line, jsonl
from workflows.local_driver import WORKFLOW, run_workflow


@pytest.fixture()
def bucket(stack: Stack) -> Iterator[Any]:
    """The stack's batch bucket, with nothing under inbox/ before and after the test."""
    batch_bucket = stack.storage().bucket(stack.info["batch_bucket"])

    def clear_inbox() -> None:
        for blob in batch_bucket.client.list_blobs(batch_bucket.name, prefix="inbox/"):
            blob.delete()

    clear_inbox()
    yield batch_bucket
    clear_inbox()


def _names(bucket: Any) -> set[str]:
    return {blob.name for blob in bucket.client.list_blobs(bucket.name)}


def _lines(bucket: Any, uri: str) -> list[dict[str, Any]]:
    name = uri.split("/", 3)[3]
    return [json.loads(line) for line in bucket.blob(name).download_as_text().splitlines() if line]


def _steps(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every step's body, nested ones (try, except, for, switch branches) included."""
    for entry in steps:
        for body in entry.values():
            yield body
            for key in ("steps",):
                yield from _steps(body.get(key, []))
            for block in ("try", "for"):
                inner = body.get(block, {})
                yield inner
                yield from _steps(inner.get("steps", []))
            yield from _steps(body.get("except", {}).get("steps", []))


def test_the_workflow_writes_no_firestore_and_runs_no_connector() -> None:
    definition = yaml.safe_load(WORKFLOW.read_text())
    calls = {step["call"] for body in definition.values() for step in _steps(body["steps"]) if "call" in step}
    assert not {c for c in calls if c.startswith("googleapis.")}  # no connector: HTTP only, runnable locally
    urls = " ".join(str(step.get("args", {}).get("url", "")) for body in definition.values()
                    for step in _steps(body["steps"]))
    assert "firestore" not in urls and "/v1/batches" in urls


def test_nightly_run_processes_two_inbox_files_one_bad(stack: Stack, db: Any, bucket: Any, tmp_path: Path) -> None:
    good = [chat_line("g0", "Hello?"), completion_line("g1", "Once"), completion_line("g2", "Twice")]
    bucket.blob("inbox/good.jsonl").upload_from_string(jsonl(good))
    bucket.blob("inbox/bad.jsonl").upload_from_string("this is not JSONL\n[1, 2, 3]\n")
    bucket.blob("inbox/").upload_from_string(b"")  # a console "folder": not a batch file

    summary = run_workflow(stack.info, {"batch_bucket": bucket.name}, log_file=tmp_path / "workflow.log")

    assert (summary["files"], summary["completed"], summary["failed"], summary["cancelled"]) == (2, 1, 1, 0)
    results = {r["file"]: r for r in summary["results"]}
    ok, bad = results["good.jsonl"], results["bad.jsonl"]
    assert ok["status"] == "completed" and ok["error"] == ""
    assert ok["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert ok["moved_to"] == "processed/good.jsonl"
    assert ok["output_uri"] == f"gs://{bucket.name}/outbox/{ok['batch_id']}/output.jsonl"
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
    assert run_workflow(stack.info, {"batch_bucket": bucket.name}, log_file=tmp_path / "workflow.log")["files"] == 0


def test_a_batch_not_done_by_the_deadline_stays_and_the_next_night_finishes_it(
        stack: Stack, db: Any, bucket: Any, tmp_path: Path) -> None:
    blob = bucket.blob("inbox/night.jsonl")
    blob.upload_from_string(jsonl([completion_line(f"n{i}", f"N{i}") for i in range(3)]))

    # A deadline of 0 s: the first poll finds the batch still loading its model (it keeps running). As a
    # string: the emulator's default() takes a 0 for no value (Workflows does not; the YAML reads both).
    first = run_workflow(stack.info, {"batch_bucket": bucket.name, "wait_seconds": "0"},
                         log_file=tmp_path / "workflow.log")
    (result,) = first["results"]
    assert first["failed"] == 1 and result["status"] != "completed" and "deadline" in result["error"]
    assert result["moved_to"] == "" and "inbox/night.jsonl" in _names(bucket)  # left for the next run

    watcher = DocWatcher(db, result["batch_id"])
    try:
        second = run_workflow(stack.info, {"batch_bucket": bucket.name}, log_file=tmp_path / "workflow.log")
    finally:
        watcher.close()
    (again,) = second["results"]
    assert again["batch_id"] == result["batch_id"]  # the same object version: the same batch, not a second one
    assert again["status"] == "completed" and again["request_counts"]["completed"] == 3
    assert "processed/night.jsonl" in _names(bucket) and "inbox/night.jsonl" not in _names(bucket)
