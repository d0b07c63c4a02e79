"""The Files API's ports (jobs/files.py): records in Firestore `files/{id}`, bytes in Cloud Storage, streamed
both ways (an upload goes to GCS in resumable chunks as it arrives; a download is read a chunk at a time)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from jobs.adapters.batch_files import Location
from jobs.adapters.firestore_writes import RETRY, TIMEOUT
from jobs.adapters.google_errors import unavailable_as
from jobs.constants import FILES_COLLECTION
from jobs.errors import DependencyUnavailable, NotFound, PayloadTooLarge
from jobs.files import FilePage, FileRecord

CHUNK_BYTES = 1024 * 1024  # a multiple of 256 KiB, as resumable uploads require
_STORE_DOWN, _BUCKET_DOWN = "the file store is unavailable", "the file bucket is unavailable"


class FirestoreFileStore:
    def __init__(self, client: firestore.Client, *, collection: str = FILES_COLLECTION) -> None:
        self._files = client.collection(collection)

    def create(self, record: FileRecord) -> bool:
        with unavailable_as(_STORE_DOWN):
            try:
                self._files.document(record.id).create(record.model_dump(mode="python"), timeout=TIMEOUT,
                                                       retry=RETRY)
            except gexc.Conflict:
                return False
        return True

    def put(self, record: FileRecord) -> None:
        with unavailable_as(_STORE_DOWN):
            self._files.document(record.id).set(record.model_dump(mode="python"), timeout=TIMEOUT, retry=RETRY)

    def get(self, file_id: str) -> FileRecord | None:
        with unavailable_as(_STORE_DOWN):
            snapshot = self._files.document(file_id).get(timeout=TIMEOUT, retry=RETRY)
        return FileRecord.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def delete(self, file_id: str) -> None:
        with unavailable_as(_STORE_DOWN):
            self._files.document(file_id).delete(timeout=TIMEOUT, retry=RETRY)

    def list(self, tenant: str, *, purpose: str | None, limit: int, after: FileRecord | None,
             newest_first: bool) -> FilePage:
        # tenant (+ purpose) ordered by created_at, then id: the composite indexes of pulumi/llmq_infra/store.py.
        direction = firestore.Query.DESCENDING if newest_first else firestore.Query.ASCENDING
        query = self._files.where(filter=FieldFilter("tenant", "==", tenant))
        if purpose is not None:
            query = query.where(filter=FieldFilter("purpose", "==", purpose))
        query = query.order_by("created_at", direction=direction).order_by(FieldPath.document_id(),
                                                                           direction=direction)
        if after is not None:
            query = query.start_after({"created_at": after.created_at,
                                       FieldPath.document_id(): self._files.document(after.id)})
        with unavailable_as(_STORE_DOWN):
            records = [FileRecord.model_validate(s.to_dict())
                       for s in query.limit(limit + 1).stream(timeout=TIMEOUT, retry=RETRY)]
        return FilePage(records[:limit], has_more=len(records) > limit)


class GcsContents:
    """FileContents over a google.cloud.storage.Client."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage

    def _blob(self, uri: str) -> Any:
        location = Location.parse(uri)
        return self._storage.bucket(location.bucket).blob(location.name)

    def writer(self, uri: str, *, max_bytes: int) -> GcsWriter:
        return GcsWriter(self._blob(uri), max_bytes=max_bytes)

    def chunks(self, uri: str) -> Iterator[bytes]:
        """Read lazily: the first chunk's read raises NotFound or DependencyUnavailable; a failure after it
        can only cut the answer short."""
        with unavailable_as(_BUCKET_DOWN):
            try:
                with self._blob(uri).open("rb", chunk_size=CHUNK_BYTES) as reader:
                    while chunk := reader.read(CHUNK_BYTES):
                        yield chunk
            except gexc.NotFound:
                raise NotFound("the file's content is gone", code="file_not_found") from None

    def size(self, uri: str) -> int | None:
        location = Location.parse(uri)
        with unavailable_as(_BUCKET_DOWN):
            blob = self._storage.bucket(location.bucket).get_blob(location.name)
        return None if blob is None else int(blob.size)

    def mark_expiry(self, uri: str, expire_at: datetime) -> None:
        blob = self._blob(uri)
        blob.custom_time = expire_at
        with unavailable_as(_BUCKET_DOWN):
            blob.patch()

    def delete(self, uri: str) -> None:
        with unavailable_as(_BUCKET_DOWN), contextlib.suppress(gexc.NotFound):
            self._blob(uri).delete()


class GcsWriter:
    """A resumable upload fed as the bytes arrive: at most one chunk is held. The object exists only once
    `finish` commits the last chunk; an abandoned upload leaves nothing."""

    def __init__(self, blob: Any, *, max_bytes: int) -> None:
        self._blob = blob
        self._max = max_bytes
        self._stream: Any = None
        self.written = 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self._max:
            self.abort()
            raise PayloadTooLarge(f"a file may be at most {self._max} bytes")
        try:
            with unavailable_as(_BUCKET_DOWN):
                if self._stream is None:
                    self._stream = self._blob.open("wb", chunk_size=CHUNK_BYTES, ignore_flush=True,
                                                   content_type="application/octet-stream")
                self._stream.write(data)
        except DependencyUnavailable:
            self.abort()
            raise
        self.written += len(data)
        return len(data)

    def finish(self) -> None:
        with unavailable_as(_BUCKET_DOWN):
            if self._stream is None:  # an empty file
                self._blob.upload_from_string(b"", content_type="application/octet-stream")
            else:
                self._stream.close()

    def abort(self) -> None:
        # An unfinished resumable session creates no object (Cloud Storage drops it after a week).
        self._stream = None
