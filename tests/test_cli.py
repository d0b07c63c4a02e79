"""The llmq command end to end against the local stack: typer's CliRunner in this process, and real
subprocesses where the test kills one (`llmq run` killed midway, then rerun: every line exactly once,
no job submitted twice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter
from typer.testing import CliRunner, Result

from llmq.cli import app
from scripts.stack_client import REPO, Stack
from tests.batch_helpers import chat_line, jsonl


def _env(stack: Stack) -> dict[str, str | None]:
    return {"LLMQ_STACK_JSON": str(stack.state_dir / "stack.json"), "LLMQ_BASE_URL": None, "LLMQ_API_KEY": None}


def llmq(stack: Stack, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=_env(stack))


def _process(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m llmq ARGS` as its own process, from the repository."""
    return subprocess.run([sys.executable, "-m", "llmq", *args], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_submit_wait_get_watch_stream_and_models(stack: Stack, tmp_path: Path) -> None:
    waited = llmq(stack, "submit", "Hello", "--max-tokens", "4", "--wait")
    assert waited.exit_code == 0, waited.stderr
    assert waited.stdout.strip()

    submitted = llmq(stack, "submit", "Hello", "--max-tokens", "4", "--json", "--metadata", "via=cli")
    assert submitted.exit_code == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "queued" and job["metadata"] == {"via": "cli"}
    got = llmq(stack, "get", job["id"], "--wait", "--json")
    assert got.exit_code == 0 and json.loads(got.stdout)["status"] == "succeeded"
    watched = llmq(stack, "watch", job["id"])
    assert watched.exit_code == 0 and "succeeded" in watched.stderr
    assert watched.stdout.strip() == json.loads(got.stdout)["output"].strip()

    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]))
    streamed = llmq(stack, "submit", "--messages", str(messages), "--max-tokens", "8", "--stream")
    assert streamed.exit_code == 0, streamed.stderr
    assert streamed.stdout.strip()

    models = llmq(stack, "models", "--json")
    assert models.exit_code == 0 and json.loads(models.stdout)[0]["id"] == stack.info["model"]


def test_errors_exit_non_zero_with_the_reason_on_stderr(stack: Stack) -> None:
    invalid = llmq(stack, "submit", "x", "--max-tokens", "0")
    assert invalid.exit_code == 1 and "invalid_request" in invalid.stderr and "max_tokens" in invalid.stderr
    missing = llmq(stack, "get", f"job_{uuid.uuid4().hex}")
    assert missing.exit_code == 1 and "not_found" in missing.stderr

    # Greedy (temperature 0), so no early end-of-sequence, and long: 2500 tokens took 6.5 s under the full suite,
    # as long as the cancel took to arrive; 7000 leave it tens of seconds.
    job = json.loads(llmq(stack, "submit", "A long story begins:", "--max-tokens", "7000", "--temperature", "0",
                          "--json").stdout)
    cancelled = llmq(stack, "cancel", job["id"])
    assert cancelled.exit_code == 0 and cancelled.stdout.strip() == f"{job['id']} cancelled"
    ended = llmq(stack, "get", job["id"], "--wait")
    assert ended.exit_code == 1 and f"job {job['id']} cancelled" in ended.stderr

    nowhere = CliRunner().invoke(app, ["models"], env={"LLMQ_STACK_JSON": str(stack.state_dir / "none.json"),
                                                       "LLMQ_BASE_URL": None, "LLMQ_API_KEY": None})
    assert nowhere.exit_code == 1 and "no server configured" in nowhere.stderr


def _out_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_run_killed_midway_then_rerun_writes_every_line_once_and_submits_no_job_twice(
        stack: Stack, db: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    source, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    count = 24
    source.write_text("".join(json.dumps({"custom_id": f"p{i}", "prompt": f"Prompt number {i} of this run:", "metadata": {"run": tag}})
                              + "\n" for i in range(count)))
    args = ["run", str(source), "-o", str(out), "--max-tokens", "8", "-c", "3"]
    env = {**os.environ, "LLMQ_STACK_JSON": str(stack.state_dir / "stack.json")}
    env.pop("LLMQ_BASE_URL", None)
    env.pop("LLMQ_API_KEY", None)
    first = subprocess.Popen([sys.executable, "-m", "llmq", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(_out_lines(out)) < 5 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, "the run ended before it could be killed midway"
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.communicate(timeout=30)
    written = len(_out_lines(out))
    assert 5 <= written < count

    rerun = _process(*args, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{count} requests, {written} already in" in rerun.stderr
    lines = _out_lines(out)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"p{i}" for i in range(count))
    assert all(line["status"] == "succeeded" and line["output"] is not None for line in lines)
    job_ids = {line["job_id"] for line in lines}
    assert len(job_ids) == count
    # Every job the two runs created, found by the tag their requests carried: one per line, none twice.
    created = {doc.id for doc in db.collection("jobs").where(filter=FieldFilter("metadata.run", "==", tag)).stream()}
    assert created == job_ids


def test_batch_create_watch_results_and_cancel(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "batch.jsonl"
    source.write_text(jsonl([*(chat_line(f"c{i}", f"Hi {i}", max_tokens=4) for i in range(3)), "not json"]))
    created = llmq(stack, "batch", "create", str(source), "--watch", "--timeout", "300")
    assert created.exit_code == 0, created.stderr
    batch_id, status, progress = created.stdout.split()[:3]
    assert status == "completed" and progress == "4/4"
    status_json = json.loads(llmq(stack, "batch", "status", batch_id, "--json").stdout)
    assert status_json["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    # One endpoint in every line: uploaded through the Files API and batched by its id, as OpenAI's SDK does.
    assert status_json["input_file_id"].startswith("file-") and status_json["endpoint"] == "/v1/chat/completions"
    results = llmq(stack, "batch", "results", batch_id)
    assert results.exit_code == 0
    assert sorted(json.loads(line)["custom_id"] for line in results.stdout.splitlines()) == ["c0", "c1", "c2"]
    errors = llmq(stack, "batch", "results", batch_id, "--errors")
    assert [json.loads(line)["error"]["code"] for line in errors.stdout.splitlines()] == ["invalid_json"]
    assert llmq(stack, "batch", "cancel", batch_id).stdout.split()[1] == "completed"
    missing = llmq(stack, "batch", "status", f"batch_{uuid.uuid4().hex}")
    assert missing.exit_code == 1 and "not_found" in missing.stderr


def test_keys_create_list_revoke_and_stack_status(stack: Stack) -> None:
    state = ["--state-dir", str(stack.state_dir)]
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    created = _process("keys", "create", "--tenant", tenant, "--name", "t", *state)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("llmq_")
    with_key = CliRunner().invoke(app, ["--api-key", key, "models"], env=_env(stack))
    assert with_key.exit_code == 0, with_key.stderr
    listed = _process("keys", "list", "--tenant", tenant, *state)
    assert listed.returncode == 0 and "active" in listed.stdout
    revoked = _process("keys", "revoke", "--key", key, *state)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in _process("keys", "list", "--tenant", tenant, *state).stdout

    status = CliRunner().invoke(app, ["stack", "status", "--state-dir", str(stack.state_dir), "--json"])
    report = json.loads(status.stdout)
    assert status.exit_code == 0 and report["running"] and report["api_url"] == stack.info["api_url"]
