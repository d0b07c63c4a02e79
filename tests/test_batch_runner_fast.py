"""Fast tier: the batch runner (runner/batch.py) over in-memory ports and an engine double, on local files — what
OpenAI's batch object needs from it: the endpoint rule, the end of the completion window, the output and error
files registered for the Files API, and the tokens in `usage`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobs.adapters.batch_files import BatchFiles
from jobs.batch_state import BatchStatus
from jobs.batches import BatchRecord
from jobs.engine import Engine
from jobs.files import OUTPUT_PURPOSE, output_file_id
from runner.batch import BatchRunner
from runner.batch_settings import BatchSettings
from tests.memory import InMemoryBatchStore, InMemoryEngine, InMemoryFileStore

BATCH = "batch_fast"


def _line(custom_id: str, url: str = "/v1/completions", max_tokens: int = 3) -> str:
    body: dict[str, Any] = ({"prompt": "two words", "max_tokens": max_tokens} if url == "/v1/completions"
                            else {"messages": [{"role": "user", "content": "two words"}], "max_tokens": max_tokens})
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def _run(tmp_path: Path, lines: list[str], record: BatchRecord, engine: InMemoryEngine | None = None,
         ) -> tuple[BatchRecord, InMemoryFileStore, Path]:
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    store, file_store = InMemoryBatchStore(), InMemoryFileStore()
    store.create(record)
    chosen = engine or InMemoryEngine()

    async def load() -> Engine:
        return chosen

    runner = BatchRunner(settings=BatchSettings(model_name="tiny-llama", batch_progress_interval_seconds=0.05),
                         engine=load, files=BatchFiles(None), store=store, file_store=file_store,
                         input_uri=str(tmp_path / "in.jsonl"), output_prefix=str(tmp_path / "out"), batch_id=BATCH)
    asyncio.run(runner.run())
    final = store.get(BATCH)
    assert final is not None
    return final, file_store, tmp_path / "out"


def _record(**changes: Any) -> BatchRecord:
    fresh = BatchRecord.new(batch_id=BATCH, input_uri="in", output_prefix=None, now=datetime.now(UTC), tenant="acme")
    return fresh.model_copy(update=changes)


def _custom_ids(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]


def test_an_openai_batch_ends_with_its_files_registered_and_its_usage(tmp_path: Path) -> None:
    lines = [_line("a"), _line("b"), _line("c", url="/v1/chat/completions"), "not json"]
    final, file_store, out = _run(tmp_path, lines, _record(endpoint="/v1/completions", input_file_id="file-in"))
    assert final.status is BatchStatus.COMPLETED
    assert final.request_counts.model_dump() == {"total": 4, "completed": 2, "failed": 2}
    assert final.usage.prompt_tokens == 4 and final.usage.completion_tokens == 6  # 2 lines × (2 in, 3 out)
    assert final.output_file_id == output_file_id(BATCH, "output")
    assert final.error_file_id == output_file_id(BATCH, "errors")
    output, errors = file_store.records[final.output_file_id], file_store.records[final.error_file_id]
    assert (output.tenant, output.purpose, output.batch_id) == ("acme", OUTPUT_PURPOSE, BATCH)
    assert output.uri == str(out / "output.jsonl") and output.bytes == (out / "output.jsonl").stat().st_size
    assert errors.bytes == (out / "errors.jsonl").stat().st_size
    codes = {json.loads(x)["custom_id"]: json.loads(x)["error"]["code"] for x in (out / "errors.jsonl").read_text().splitlines()}
    assert codes == {"c": "url_endpoint_mismatch", None: "invalid_json"}


def test_a_batch_without_errors_has_no_error_file(tmp_path: Path) -> None:
    final, file_store, _ = _run(tmp_path, [_line("a")], _record())
    assert final.status is BatchStatus.COMPLETED and final.error_file_id is None
    assert list(file_store.records) == [final.output_file_id]


def test_a_batch_past_its_window_ends_expired_and_runs_nothing(tmp_path: Path) -> None:
    engine = InMemoryEngine()
    past = datetime.now(UTC) - timedelta(seconds=1)
    final, _, out = _run(tmp_path, [_line("a"), _line("b")], _record(expires_at=past), engine)
    assert final.status is BatchStatus.EXPIRED and final.expired_at is not None and engine.started == []
    assert final.request_counts.model_dump() == {"total": 2, "completed": 0, "failed": 2}
    codes = [json.loads(x)["error"]["code"] for x in (out / "errors.jsonl").read_text().splitlines()]
    assert codes == ["batch_expired", "batch_expired"] and final.output_file_id is None


def test_the_window_ending_mid_run_keeps_the_finished_lines_and_expires_the_rest(tmp_path: Path) -> None:
    # Each request runs 400 steps; one at a time; the window ends while the first lines run.
    engine = InMemoryEngine(max_model_len=1000)
    lines = [_line(f"r{i}", max_tokens=400) for i in range(40)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    store, file_store = InMemoryBatchStore(), InMemoryFileStore()
    store.create(_record(expires_at=datetime.now(UTC) + timedelta(milliseconds=300)))

    async def load() -> Engine:
        return engine

    async def slow_generation() -> None:
        runner = BatchRunner(settings=BatchSettings(model_name="tiny-llama", max_concurrency=1,
                                                    batch_inflight_factor=1), engine=load, files=BatchFiles(None),
                             store=store, file_store=file_store, input_uri=str(tmp_path / "in.jsonl"),
                             output_prefix=str(tmp_path / "out"), batch_id=BATCH)
        real = engine.generate

        async def paced(request: Any) -> Any:  # a step every millisecond: 0.4 s a request
            async for update in real(request):
                await asyncio.sleep(0.001)
                yield update

        engine.generate = paced  # type: ignore[method-assign]
        await runner.run()

    asyncio.run(slow_generation())
    final = store.get(BATCH)
    assert final is not None and final.status is BatchStatus.EXPIRED
    done = _custom_ids(tmp_path / "out" / "output.jsonl")
    expired = _custom_ids(tmp_path / "out" / "errors.jsonl")
    assert 1 <= len(done) < 40 and sorted(done + expired) == sorted(f"r{i}" for i in range(40))
    assert final.request_counts.completed == len(done) and final.request_counts.failed == len(expired)
