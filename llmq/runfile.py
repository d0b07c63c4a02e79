"""`llmq run IN -o OUT`: a file of prompts through map(), resumable. Pure file logic here; the CLI drives it.

Input lines are read as: an OpenAI batch line (`{"custom_id", "method", "url", "body"}`), a job body
(`{"prompt" | "messages", ...}`, optionally with `custom_id`), or plain text (one user message). A line's
custom_id is its own, else `line-N` (1-based). Each line's idempotency key is derived from the input file's
path, its custom_id and its body, so a rerun after a crash attaches to the jobs already submitted; OUT is
appended one whole line at a time (flushed and fsynced), and the custom_ids already in OUT are skipped."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from llmq import _core
from llmq.errors import APIStatusError
from llmq.types import MapResult


@dataclass(frozen=True)
class Line:
    number: int
    custom_id: str
    body: dict[str, Any]
    idempotency_key: str

    def request(self) -> dict[str, Any]:
        return {**self.body, "custom_id": self.custom_id, "idempotency_key": self.idempotency_key}


class InputError(ValueError):
    """A line of the input file that cannot be read as a request."""


def parse_line(text: str, number: int, defaults: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(custom_id, body) of one input line; None for a blank one."""
    stripped = text.strip()
    if not stripped:
        return None
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError as err:
            raise InputError(f"line {number}: not valid JSON ({err})") from err
        if not isinstance(obj, dict):
            raise InputError(f"line {number}: not a JSON object")
        custom_id = obj.get("custom_id")
        body = obj["body"] if isinstance(obj.get("body"), dict) else {k: v for k, v in obj.items() if k != "custom_id"}
        if "prompt" not in body and "messages" not in body:
            raise InputError(f"line {number}: no prompt or messages")
    else:
        custom_id, body = None, {"messages": [{"role": "user", "content": stripped}]}
    return str(custom_id) if custom_id is not None else f"line-{number}", {**defaults, **body}


def read_input(path: Path, defaults: dict[str, Any]) -> list[Line]:
    """Every request of the input. Raises InputError on a malformed line or a repeated custom_id."""
    identity = str(path.resolve())
    lines: list[Line] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            parsed = parse_line(text, number, defaults)
            if parsed is None:
                continue
            custom_id, body = parsed
            if custom_id in seen:
                raise InputError(f"line {number}: custom_id {custom_id!r} appears twice")
            seen.add(custom_id)
            key = _core.content_key("run", identity, custom_id, _core.canonical(body))
            lines.append(Line(number, custom_id, body, key))
    return lines


def done_ids(out: Path) -> set[str]:
    """The custom_ids already written to OUT. A torn last line (a crash mid-write) is cut off first."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(out, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
        data = data[: data.rfind(b"\n") + 1]
    return {json.loads(line)["custom_id"] for line in data.decode().splitlines() if line.strip()}


def result_line(result: MapResult) -> dict[str, Any]:
    job = result.job
    if job is None:
        err = result.error
        return {"custom_id": result.custom_id, "job_id": None, "status": "error", "output": None,
                "finish_reason": None, "usage": None,
                "error": {"code": getattr(err, "code", type(err).__name__), "message": str(err)}}
    return {"custom_id": result.custom_id, "job_id": job.id, "status": job.status, "output": job.output,
            "finish_reason": job.finish_reason, "usage": job.usage.model_dump() if job.usage else None,
            "error": job.error.model_dump() if job.error else None}


def is_final(result: MapResult) -> bool:
    """Whether the result belongs in OUT: a job that ended, or a request the API refused for good (4xx but
    429). A network failure, an outage or a timeout is left out, so a rerun tries that line again."""
    if result.job is not None:
        return result.job.done
    err = result.error
    return isinstance(err, APIStatusError) and 400 <= err.status_code < 500 and err.status_code != 429


def append(out: IO[str], line: dict[str, Any]) -> None:
    """One whole line per write, on disk before the next: a crash loses at most this line."""
    out.write(json.dumps(line, ensure_ascii=False) + "\n")
    out.flush()
    os.fsync(out.fileno())


def pending(lines: list[Line], done: set[str]) -> Iterator[dict[str, Any]]:
    return (line.request() for line in lines if line.custom_id not in done)
