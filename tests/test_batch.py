"""The batch runner (`python -m runner.batch`) on local files with the real tiny-model engine, its
Firestore document, resume after a kill, cancellation, and the split across Cloud Run tasks; and the
pure parts (line validation, throttling, torn-line repair)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from jobs.adapters.batch_files import repair_torn_tail
from jobs.adapters.batch_store import FirestoreBatchStore, ThrottledProgress
from jobs.batches import BatchLine, ErrorCode, LineError, cancel, nightly_batch_id, parse_lines
from scripts.stack_client import Stack
from tests.batch_helpers import (
    DocWatcher,
    chat_line,
    completion_line,
    count_lines,
    jsonl,
    kill_group,
    read_jsonl,
    run_batch,
    start_batch,
    stop,
    wait_for,
)

LONG_PROMPT = "word " * 6000  # about 18 000 tokens: more than the tiny model's 8192 context
SLOW = {"LLMQ_MAX_CONCURRENCY": "2", "LLMQ_BATCH_INFLIGHT_FACTOR": "1"}  # 2 in flight: a run takes a while


def _batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


# --- pure ---------------------------------------------------------------------------------------

def test_parse_lines_rejects_each_bad_shape_with_its_line_number() -> None:
    lines = [
        json.dumps(chat_line("a", "hi")),
        "",  # blank: skipped, still counted
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"custom_id": "b", "method": "GET", "url": "/v1/completions", "body": {"prompt": "x"}}),
        json.dumps({"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}),
        json.dumps(completion_line("d", "x", logit_bias={})),
        json.dumps(completion_line("e", "x", temperature=5)),
        json.dumps({**chat_line("f", "x"), "url": "/v1/completions"}),
        json.dumps(completion_line("a", "again")),
        json.dumps(completion_line("h", "x", stream=True)),
        json.dumps(completion_line("g", "fine", stream=False)),
    ]
    parsed = list(parse_lines(line.encode() for line in lines))
    assert [p.line for p in parsed] == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert isinstance(parsed[0], BatchLine) and parsed[0].kind == "chat" and parsed[0].custom_id == "a"
    assert isinstance(parsed[-1], BatchLine) and parsed[-1].kind == "completion"
    errors = [(p.line, p.custom_id, p.code) for p in parsed if isinstance(p, LineError)]
    assert errors == [
        (3, None, ErrorCode.INVALID_JSON),
        (4, None, ErrorCode.INVALID_JSON),
        (5, "b", ErrorCode.INVALID_LINE),
        (6, "c", ErrorCode.UNSUPPORTED_URL),
        (7, "d", ErrorCode.UNSUPPORTED_PARAMETER),
        (8, "e", ErrorCode.INVALID_BODY),
        (9, "f", ErrorCode.URL_BODY_MISMATCH),
        (10, "a", ErrorCode.DUPLICATE_CUSTOM_ID),
        (11, "h", ErrorCode.UNSUPPORTED_PARAMETER),
    ]


def test_progress_writes_are_throttled_and_the_last_value_is_flushed() -> None:
    now = [0.0]
    written: list[int] = []
    progress = ThrottledProgress(written.append, interval=1.0, clock=lambda: now[0])
    for i in range(100):  # 100 offers within 0.99 s: one write
        now[0] = i / 100
        progress.offer(i)
    assert written == [0]
    now[0] = 1.5
    progress.offer(100)
    assert written == [0, 100]
    progress.offer(101)
    assert progress.flush() and written == [0, 100, 101]
    assert not progress.flush()  # nothing pending


def test_torn_last_line_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert repair_torn_tail(path) == len(b'{"c": ')
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert repair_torn_tail(path) == 0


def test_nightly_batch_id_is_stable_and_valid() -> None:
    first = nightly_batch_id("b", "inbox/x.jsonl", "1700000000000001")
    assert first == nightly_batch_id("b", "inbox/x.jsonl", 1700000000000001)
    assert first != nightly_batch_id("b", "inbox/x.jsonl", "1700000000000002")
    assert first.startswith("batch_") and len(first) == 38 and "+" not in first and "/" not in first


# --- the runner, end to end -----------------------------------------------------------------------

def test_mixed_file_gives_exact_output_and_error_lines_and_counts(stack: Stack, db: Any, tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [
        chat_line("chat-1", "Tell me about rivers.", metadata={"k": "v"}),
        completion_line("comp-1", "Once upon a time"),
        '{"custom_id": "torn", "method": "POST", "url": ',
        completion_line("chat-1", "a duplicate custom_id"),
        completion_line("too-long", LONG_PROMPT),
        {"custom_id": "embed", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
        completion_line("comp-2", "The end", max_tokens=4),
    ]
    (tmp_path / "in.jsonl").write_text(jsonl(lines))
    batch_id = _batch_id()
    watcher = DocWatcher(db, batch_id)
    try:
        code = run_batch(stack, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"),
                         "--batch-id", batch_id, log=tmp_path / "run.log")
        assert code == 0, (tmp_path / "run.log").read_text()[-3000:]
        doc = watcher.wait_final(60)
    finally:
        watcher.close()

    output = read_jsonl(tmp_path / "out" / "output.jsonl")
    assert sorted(o["custom_id"] for o in output) == ["chat-1", "comp-1", "comp-2"]
    for line in output:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert set(response) == {"status_code", "request_id", "body"} and response["status_code"] == 200
        body = response["body"]
        assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
        assert body["model"] == stack.info["model"]
        (choice,) = body["choices"]
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert choice["finish_reason"] in ("stop", "length") and choice["index"] == 0
        if line["custom_id"] == "chat-1":
            assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
            assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        else:
            assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
            assert isinstance(choice["text"], str)
        assert 1 <= usage["completion_tokens"] <= (4 if line["custom_id"] == "comp-2" else 8)

    errors = read_jsonl(tmp_path / "out" / "errors.jsonl")
    assert [(e["custom_id"], e["error"]["code"], e["error"]["line"]) for e in errors] == [
        (None, "invalid_json", 3),
        ("chat-1", "duplicate_custom_id", 4),
        ("too-long", "context_length_exceeded", 5),
        ("embed", "unsupported_url", 6),
    ]
    for error in errors:
        assert set(error) == {"id", "custom_id", "response", "error"} and error["response"] is None
        assert set(error["error"]) == {"code", "message", "line"} and error["error"]["message"]
    assert len({line["id"] for line in output + errors}) == len(output) + len(errors)

    assert doc["status"] == "completed"
    assert doc["request_counts"] == {"total": 7, "completed": 3, "failed": 4}
    assert doc["input_uri"] == str(tmp_path / "in.jsonl")
    assert doc["output_uri"] == str(tmp_path / "out" / "output.jsonl")
    assert doc["error_uri"] == str(tmp_path / "out" / "errors.jsonl")
    assert doc["model"] == stack.info["model"]
    assert doc["created_at"] <= doc["in_progress_at"] <= doc["finalizing_at"] <= doc["completed_at"]
    assert isinstance(doc["expire_at"], datetime)
    seen = watcher.statuses()
    assert seen[-1] == "completed" and seen == [s for s in ("validating", "in_progress", "finalizing", "completed")
                                                if s in seen]


def test_killed_midway_and_rerun_writes_every_line_exactly_once(stack: Stack, db: Any, tmp_path: Path) -> None:
    total = 40
    (tmp_path / "in.jsonl").write_text(jsonl([completion_line(f"r{i}", f"Story {i}:", max_tokens=16)
                                              for i in range(total)]))
    out = tmp_path / "out"
    output = out / "output.jsonl"
    batch_id = _batch_id()
    args = ("--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--batch-id", batch_id)
    proc = start_batch(stack, *args, log=tmp_path / "first.log", **SLOW)
    try:
        wait_for(lambda: count_lines(output) >= 5, timeout=240, what="5 output lines", proc=proc,
                 log=tmp_path / "first.log")
        kill_group(proc)
    finally:
        stop(proc)
    before = output.read_bytes()
    written = before.count(b"\n")
    assert 5 <= written < total, "the run ended before it could be killed midway"
    with open(output, "ab") as f:  # what a crash in the middle of a write leaves behind
        f.write(b'{"id":"batch_req_torn","custom_id":"r')

    watcher = DocWatcher(db, batch_id)
    try:
        started = time.monotonic()
        code = run_batch(stack, *args, log=tmp_path / "second.log", **SLOW)
        elapsed = time.monotonic() - started
        assert code == 0, (tmp_path / "second.log").read_text()[-3000:]
        doc = watcher.wait_final(60)
    finally:
        watcher.close()
    after = output.read_bytes()
    assert after.startswith(before), "lines written before the kill must stay as they were"
    ids = [line["custom_id"] for line in read_jsonl(output)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(total)) and len(ids) == len(set(ids)) == total
    assert read_jsonl(out / "errors.jsonl") == []
    assert doc["status"] == "completed"
    assert doc["request_counts"] == {"total": total, "completed": total, "failed": 0}
    # Progress writes are coalesced to about one a second (plus the status changes).
    assert len(watcher.history) <= elapsed + 6, (len(watcher.history), elapsed)

    # A third run finds everything done: nothing is written again.
    assert run_batch(stack, *args, log=tmp_path / "third.log") == 0
    assert output.read_bytes() == after


def test_cancel_stops_new_requests_and_keeps_finished_lines(stack: Stack, db: Any, tmp_path: Path) -> None:
    total = 80
    (tmp_path / "in.jsonl").write_text(jsonl([completion_line(f"c{i}", f"Tale {i}:", max_tokens=16)
                                              for i in range(total)]))
    out = tmp_path / "out"
    batch_id = _batch_id()
    proc = start_batch(stack, "--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--batch-id", batch_id,
                       log=tmp_path / "run.log", **SLOW)
    watcher = DocWatcher(db, batch_id)
    try:
        wait_for(lambda: count_lines(out / "output.jsonl") >= 3, timeout=240, what="3 output lines", proc=proc,
                 log=tmp_path / "run.log")
        store = FirestoreBatchStore(db)
        record, changed = store.update(batch_id, lambda r: cancel(r, now=datetime.now(r.created_at.tzinfo)))
        assert changed and record is not None and record.status.value == "cancelling"
        assert proc.wait(timeout=120) == 0
        doc = watcher.wait_final(60)
    finally:
        stop(proc)
        watcher.close()
    output = read_jsonl(out / "output.jsonl")
    errors = read_jsonl(out / "errors.jsonl")
    assert 3 <= len(output) < total
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert sorted([o["custom_id"] for o in output] + [e["custom_id"] for e in errors]) == \
        sorted(f"c{i}" for i in range(total))
    assert doc["status"] == "cancelled" and doc["cancelled_at"] >= doc["cancelling_at"]
    assert doc["request_counts"] == {"total": total, "completed": len(output), "failed": len(errors)}
    assert "cancelling" in watcher.statuses()


def test_two_tasks_split_the_file_and_the_last_one_merges(stack: Stack, db: Any, tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [completion_line(f"t{i}", f"Line {i}", max_tokens=4) for i in range(9)]
    lines.insert(4, "not json")
    (tmp_path / "in.jsonl").write_text(jsonl(lines))
    out, batch_id = tmp_path / "out", _batch_id()
    args = ("--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--batch-id", batch_id)
    first, second = 1, 0  # whichever task ends last merges
    assert run_batch(stack, *args, log=tmp_path / "a.log", CLOUD_RUN_TASK_INDEX=str(first),
                     CLOUD_RUN_TASK_COUNT="2") == 0
    doc = db.collection("batches").document(batch_id).get().to_dict()
    assert doc["status"] == "in_progress" and not (out / "output.jsonl").exists()
    assert run_batch(stack, *args, log=tmp_path / "b.log", CLOUD_RUN_TASK_INDEX=str(second),
                     CLOUD_RUN_TASK_COUNT="2") == 0
    doc = db.collection("batches").document(batch_id).get().to_dict()
    assert doc["status"] == "completed"
    assert doc["request_counts"] == {"total": 10, "completed": 9, "failed": 1}
    assert sorted(line["custom_id"] for line in read_jsonl(out / "output.jsonl")) == sorted(f"t{i}" for i in range(9))
    assert [(e["error"]["code"], e["error"]["line"]) for e in read_jsonl(out / "errors.jsonl")] == [("invalid_json", 5)]


def test_unusable_input_fails_the_batch_with_the_reason(stack: Stack, db: Any, tmp_path: Path) -> None:
    batch_id = _batch_id()
    code = run_batch(stack, "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "out"),
                     "--batch-id", batch_id, log=tmp_path / "run.log")
    assert code == 0  # recorded in batches/{id}: retrying the task would not help
    doc = db.collection("batches").document(batch_id).get().to_dict()
    assert doc["status"] == "failed" and doc["error"]["code"] == "input_not_found"
    assert run_batch(stack, "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "out2"),
                     log=tmp_path / "run2.log") == 1  # no document to record it in


def test_gcs_output_resumes_on_a_fresh_machine_without_duplicates(stack: Stack, db: Any, tmp_path: Path) -> None:
    bucket_name = stack.info["batch_bucket"]
    bucket = stack.storage().bucket(bucket_name)
    prefix = f"tests/{uuid.uuid4().hex}"
    total = 80
    bucket.blob(f"{prefix}/in.jsonl").upload_from_string(
        jsonl([completion_line(f"g{i}", f"Saga {i}:", max_tokens=16) for i in range(total)]))
    args = ("--input", f"gs://{bucket_name}/{prefix}/in.jsonl", "--output", f"gs://{bucket_name}/{prefix}/out/",
            "--batch-id", _batch_id())
    output = bucket.blob(f"{prefix}/out/output.jsonl")

    def uploaded_lines() -> int:
        return output.download_as_bytes().count(b"\n") if output.exists() else 0

    # Checkpoint every second; each run gets its own work dir, as a new Cloud Run task would.
    proc = start_batch(stack, *args, log=tmp_path / "first.log", LLMQ_BATCH_CHECKPOINT_SECONDS="1",
                       LLMQ_BATCH_WORK_DIR=str(tmp_path / "machine-1"), **SLOW)
    try:
        wait_for(lambda: uploaded_lines() >= 3, timeout=240, what="a checkpoint with 3 lines", proc=proc,
                 log=tmp_path / "first.log")
        kill_group(proc)
    finally:
        stop(proc)
    before = output.download_as_bytes()
    assert 3 <= before.count(b"\n") < total
    code = run_batch(stack, *args, log=tmp_path / "second.log", LLMQ_BATCH_WORK_DIR=str(tmp_path / "machine-2"))
    assert code == 0, (tmp_path / "second.log").read_text()[-3000:]
    after = output.download_as_bytes()
    assert after.startswith(before)
    ids = [json.loads(line)["custom_id"] for line in after.splitlines()]
    assert sorted(ids) == sorted(f"g{i}" for i in range(total)) and len(set(ids)) == total
    assert bucket.blob(f"{prefix}/out/errors.jsonl").download_as_bytes() == b""
