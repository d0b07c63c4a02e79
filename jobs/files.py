"""OpenAI's Files API (CONTRACT §8), per tenant: the file object, its store and contents as ports, and the
use cases (upload, list, retrieve, content, delete). HTTP-free and client-free.

A file is two things: its bytes at `gs://<batch bucket>/files/<id>` and its record `files/{id}` in Firestore
(the record is what makes a file exist: an object without one is invisible, and is deleted by the same rule
that expires files). Uploads are `purpose: "batch"`; a batch's output and error files are records of
purpose `batch_output` that the batch runner registers over the files it wrote (`output_file`), so they are
read and deleted like any other file. Expiry: the record's `expire_at` (Firestore's TTL policy, as jobs) and
the object's custom time (a bucket lifecycle rule on `files/`); a file past `expires_at` is answered 404 at
once, whatever the sweeps' delays.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from jobs.batches import unix
from jobs.constants import FILES_PREFIX
from jobs.errors import DependencyUnavailable, InvalidRequest, NotFound

log = logging.getLogger(__name__)

UPLOAD_PURPOSES = ("batch",)
# OpenAI's other purposes: refused by name, not taken for files this platform would never use.
OTHER_PURPOSES = ("assistants", "fine-tune", "vision", "user_data", "evals")
OUTPUT_PURPOSE = "batch_output"
# OpenAI's bounds for `expires_after[seconds]`: one hour to thirty days.
MIN_EXPIRY_SECONDS, MAX_EXPIRY_SECONDS = 3600, 30 * 86400
DEFAULT_EXPIRY_SECONDS = MAX_EXPIRY_SECONDS
MAX_LIST_LIMIT, DEFAULT_LIST_LIMIT = 10_000, 10_000  # OpenAI's: limit 1 to 10,000, default 10,000
MAX_FILENAME = 512
_FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]{1,64}$")
_DIGITS = re.compile(r"^[0-9]{1,9}$")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


class FileRecord(BaseModel):
    """The Firestore document `files/{id}`; `uri` is where the bytes are."""

    model_config = ConfigDict(extra="ignore")

    id: str
    tenant: str
    bytes: int
    filename: str
    purpose: str
    uri: str
    created_at: datetime
    expire_at: datetime
    batch_id: str | None = None  # for a batch's output and error files

    def is_expired(self, now: datetime) -> bool:
        return self.expire_at <= now

    def view(self) -> dict[str, Any]:
        """OpenAI's file object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": unix(self.created_at),
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": unix(self.expire_at), "status_details": None}


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def output_file_id(batch_id: str, kind: Literal["output", "errors"]) -> str:
    """The id of a batch's output or error file: derived, so a rerun of the batch registers the same file."""
    digest = hashlib.sha256(f"{batch_id}\x00{kind}".encode()).digest()
    return "file-" + base64.b64encode(digest).decode().replace("+", "-").replace("/", "_")[:32]


def is_file_id(value: str) -> bool:
    return bool(_FILE_ID.match(value))


@dataclass(frozen=True, slots=True)
class FilePage:
    data: list[FileRecord]
    has_more: bool


class FileStore(Protocol):
    """`files/{id}` in Firestore; every method may raise DependencyUnavailable."""

    def create(self, record: FileRecord) -> bool:
        """False if the id exists already."""
        ...

    def put(self, record: FileRecord) -> None:
        """Create or replace (a batch's output file, registered again by a rerun)."""
        ...

    def get(self, file_id: str) -> FileRecord | None: ...

    def delete(self, file_id: str) -> None: ...

    def list(self, tenant: str, *, purpose: str | None, limit: int, after: FileRecord | None,
             newest_first: bool) -> FilePage:
        """The tenant's files by creation time (then id), from just past `after`; has_more if more follow."""
        ...


class FileContents(Protocol):
    """The bytes of files, by gs:// URI; every method may raise DependencyUnavailable."""

    def writer(self, uri: str, *, max_bytes: int) -> ContentWriter:
        """A writer that streams to `uri` (never holding the whole file); raises PayloadTooLarge past
        `max_bytes`."""
        ...

    def chunks(self, uri: str) -> Iterator[bytes]:
        """The bytes, a chunk at a time. Raises NotFound if there is no object."""
        ...

    def size(self, uri: str) -> int | None:
        """The object's size; None if there is none."""
        ...

    def mark_expiry(self, uri: str, expire_at: datetime) -> None:
        """Set the object's expiry (its custom time) for the bucket's lifecycle rule; without one, the rule
        deletes the object once it is older than the longest expiry."""
        ...

    def delete(self, uri: str) -> None: ...


class ContentWriter(Protocol):
    written: int

    def write(self, data: bytes) -> int: ...

    def finish(self) -> None:
        """Commit the object: only then does it exist."""
        ...

    def abort(self) -> None:
        """Give up: nothing is left at the URI."""
        ...


class FileService:
    def __init__(self, *, store: FileStore, contents: FileContents, bucket: str, max_bytes: int,
                 clock: Callable[[], datetime]) -> None:
        self._store = store
        self._contents = contents
        self._bucket = bucket
        self.max_bytes = max_bytes
        self._clock = clock

    def begin_upload(self) -> tuple[str, str]:
        """A new file's id and the URI its bytes stream to (before the form is read: the bytes come first)."""
        file_id = new_file_id()
        return file_id, f"gs://{self._bucket}/{FILES_PREFIX}{file_id}"

    def writer(self, uri: str) -> ContentWriter:
        return self._contents.writer(uri, max_bytes=self.max_bytes)

    def finish_upload(self, *, file_id: str, uri: str, written: int, filename: str | None, form: dict[str, str],
                      tenant: str) -> FileRecord:
        """Record an uploaded file whose bytes are at `uri` (written already). On any error the bytes are
        deleted again: nothing is left behind. Raises InvalidRequest, DependencyUnavailable."""
        try:
            record = self._new_record(file_id=file_id, uri=uri, written=written, filename=filename, form=form,
                                      tenant=tenant)
            if record.expire_at - record.created_at < timedelta(seconds=MAX_EXPIRY_SECONDS):
                self._contents.mark_expiry(uri, record.expire_at)
            if not self._store.create(record):  # a random id: never seen in practice
                raise DependencyUnavailable("file id collision; retry")
        except Exception:
            self.discard(uri)
            raise
        log.info("file uploaded", extra={"file_id": file_id, "bytes": written})
        return record

    def discard(self, uri: str) -> None:
        try:
            self._contents.delete(uri)
        except DependencyUnavailable:
            log.error("could not delete an unrecorded upload; the bucket's lifecycle rule will", extra={"uri": uri})

    def _new_record(self, *, file_id: str, uri: str, written: int, filename: str | None, form: dict[str, str],
                    tenant: str) -> FileRecord:
        if filename is None:
            raise _invalid("file", "a `file` part (multipart/form-data) is required", "required")
        if not filename or len(filename) > MAX_FILENAME:
            raise _invalid("file", f"the file's name must be 1 to {MAX_FILENAME} characters", "invalid_filename")
        unknown = sorted(set(form) - {"purpose", "expires_after[anchor]", "expires_after[seconds]"})
        if unknown:
            raise InvalidRequest(f"unrecognised form field(s): {', '.join(unknown)}", code="unsupported_parameter",
                                 details=[{"field": f, "code": "unsupported_parameter", "message": "not a field of "
                                           "POST /v1/files"} for f in unknown])
        purpose = form.get("purpose")
        if purpose is None:
            raise _invalid("purpose", "`purpose` is required (\"batch\")", "required")
        if purpose not in UPLOAD_PURPOSES:
            what = "is not served by llmq" if purpose in OTHER_PURPOSES else "is not a purpose"
            raise _invalid("purpose", f"purpose {purpose[:64]!r} {what}; use \"batch\"", "unsupported_value")
        seconds = DEFAULT_EXPIRY_SECONDS
        anchor, raw_seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
        if (anchor is None) != (raw_seconds is None):
            raise _invalid("expires_after", "expires_after needs both anchor and seconds", "required")
        if anchor is not None and raw_seconds is not None:
            if anchor != "created_at":
                raise _invalid("expires_after[anchor]", "the only anchor is \"created_at\"", "unsupported_value")
            if not _DIGITS.match(raw_seconds) or not MIN_EXPIRY_SECONDS <= int(raw_seconds) <= MAX_EXPIRY_SECONDS:
                raise _invalid("expires_after[seconds]",
                               f"seconds must be {MIN_EXPIRY_SECONDS} to {MAX_EXPIRY_SECONDS}", "out_of_range")
            seconds = int(raw_seconds)
        now = self._clock()
        return FileRecord(id=file_id, tenant=tenant, bytes=written, filename=filename, purpose=purpose, uri=uri,
                          created_at=now, expire_at=now + timedelta(seconds=seconds))

    def get(self, file_id: str, *, tenant: str) -> FileRecord:
        """Raises NotFound for a malformed, unknown, expired or other tenant's id."""
        record = self._store.get(file_id) if is_file_id(file_id) else None
        if record is None or record.tenant != tenant or record.is_expired(self._clock()):
            raise NotFound(f"file {file_id} not found", code="file_not_found")
        return record

    def content(self, file_id: str, *, tenant: str) -> tuple[FileRecord, Iterator[bytes]]:
        record = self.get(file_id, tenant=tenant)
        return record, self._contents.chunks(record.uri)

    def delete(self, file_id: str, *, tenant: str) -> dict[str, Any]:
        """Delete the record, then the bytes (a crash between leaves bytes nobody can name; the lifecycle
        rule removes them)."""
        record = self.get(file_id, tenant=tenant)
        self._store.delete(file_id)
        self._contents.delete(record.uri)
        return {"id": file_id, "object": "file", "deleted": True}

    def list(self, *, tenant: str, purpose: str | None, limit: int | None, after: str | None,
             order: str | None) -> dict[str, Any]:
        """OpenAI's list shape, `after` a file id of the previous page."""
        limit = DEFAULT_LIST_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise _invalid("limit", f"limit must be 1 to {MAX_LIST_LIMIT}", "out_of_range")
        if order not in (None, "asc", "desc"):
            raise _invalid("order", "order must be \"asc\" or \"desc\"", "unsupported_value")
        cursor = None
        if after is not None:
            cursor = self._store.get(after) if is_file_id(after) else None
            if cursor is None or cursor.tenant != tenant:
                raise _invalid("after", f"no file {after[:80]!r} to list after", "not_found")
        now = self._clock()
        page = self._store.list(tenant, purpose=purpose, limit=limit, after=cursor, newest_first=order != "asc")
        data = [record.view() for record in page.data if not record.is_expired(now)]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": page.has_more}


def output_file(*, batch_id: str, kind: Literal["output", "errors"], tenant: str, uri: str, size: int,
                created_at: datetime, expire_at: datetime) -> FileRecord:
    """The record of a batch's output or error file (registered by the batch runner when it wrote it)."""
    return FileRecord(id=output_file_id(batch_id, kind), tenant=tenant, bytes=size,
                      filename=f"{batch_id}_{'output' if kind == 'output' else 'error'}.jsonl",
                      purpose=OUTPUT_PURPOSE, uri=uri, created_at=created_at, expire_at=expire_at, batch_id=batch_id)


def _invalid(field: str, message: str, code: str) -> InvalidRequest:
    return InvalidRequest(message, details=[{"field": field, "code": code, "message": message}])
