"""Batch files on Cloud Storage (`gs://bucket/name`) or a local path, as the batch runner needs them.

Output is append-only JSONL (`OutputLog`). A GCS object cannot be appended to, so the output is written
to a local working copy (append + flush + fsync per line) and that copy — cut at its last complete
line — is uploaded over the object at checkpoints (every `checkpoint_seconds`, and at the end). A task
killed between checkpoints loses only the lines written since the last upload; its rerun downloads the
object, repairs a torn last line, and does those requests again, so a line is never written twice. The
cost is one whole-object upload per checkpoint (fine for outputs up to a few hundred MB per task; write
numbered parts and compose them if that ever dominates). Local output needs no checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc

from jobs.adapters.google_errors import CLIENT_ERRORS
from jobs.errors import DependencyUnavailable

log = logging.getLogger(__name__)
_GENERATION = re.compile(r"^(?P<name>.+)#(?P<generation>[0-9]{1,20})$")



@dataclass(frozen=True, slots=True)
class Location:
    """A file: `bucket` and `name` on GCS, or `name` as a local path when `bucket` is None. On GCS
    `generation` pins one version of the object (`gs://bucket/name#generation`, gsutil's notation): a batch
    of one version never reads the content of a later upload under the same name."""

    bucket: str | None
    name: str
    generation: int | None = None

    @classmethod
    def parse(cls, uri: str) -> Location:
        if uri.startswith("gs://"):
            bucket, _, name = uri[5:].partition("/")
            if not bucket:
                raise ValueError(f"no bucket in {uri!r}")
            if (pinned := _GENERATION.match(name)) is not None:
                return cls(bucket, pinned["name"], int(pinned["generation"]))
            return cls(bucket, name)
        return cls(None, str(Path(uri).resolve()))

    @property
    def is_gcs(self) -> bool:
        return self.bucket is not None

    @property
    def uri(self) -> str:
        if not self.bucket:
            return self.name
        return f"gs://{self.bucket}/{self.name}" + (f"#{self.generation}" if self.generation is not None else "")

    def child(self, name: str) -> Location:
        """`name` inside this location taken as a folder (a gs:// prefix or a local directory)."""
        if self.bucket is None:
            return Location(None, str(Path(self.name) / name))
        base = self.name if not self.name or self.name.endswith("/") else self.name + "/"
        return Location(self.bucket, base + name)


class BatchFiles:
    """Reads and writes batch files; `storage` is a google.cloud.storage.Client (None: local paths only)."""

    def __init__(self, storage: Any | None, *, work_dir: Path | None = None) -> None:
        self._storage = storage
        self._work_dir = work_dir or Path(tempfile.gettempdir()) / "llmq-batch"

    def _blob(self, location: Location) -> Any:
        if self._storage is None:
            raise ValueError("gs:// locations need a storage client")
        return self._storage.bucket(location.bucket).blob(location.name, generation=location.generation)

    def exists(self, location: Location, *, generation: str | None = None) -> bool:
        """Whether the file exists (for gs://, with `generation`: that version of the object is live)."""
        if not location.is_gcs:
            return Path(location.name).is_file()
        try:
            blob = self._blob(location)
            if generation is None:
                return bool(blob.exists())
            return bool(blob.exists(if_generation_match=int(generation)))
        except gexc.PreconditionFailed:
            return False  # a newer upload replaced that version
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the batch bucket is unavailable") from err

    def local_copy(self, location: Location) -> Path:
        """A local path holding the file (downloaded for gs://). Raises FileNotFoundError."""
        if not location.is_gcs:
            path = Path(location.name)
            if not path.is_file():
                raise FileNotFoundError(location.uri)
            return path
        path = self.work_path(location)
        try:
            self._blob(location).download_to_filename(str(path))
        except gexc.NotFound:
            path.unlink(missing_ok=True)
            raise FileNotFoundError(location.uri) from None
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable(f"cannot read {location.uri}") from err
        return path

    def read_bytes(self, location: Location) -> bytes | None:
        if not location.is_gcs:
            path = Path(location.name)
            return path.read_bytes() if path.is_file() else None
        try:
            return bytes(self._blob(location).download_as_bytes())
        except gexc.NotFound:
            return None
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable(f"cannot read {location.uri}") from err

    def size(self, location: Location) -> int | None:
        """The file's size in bytes; None if there is none."""
        if not location.is_gcs:
            path = Path(location.name)
            return path.stat().st_size if path.is_file() else None
        try:
            blob = self._blob(location)
            blob.reload()
        except gexc.NotFound:
            return None
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable(f"cannot read {location.uri}") from err
        return int(blob.size)

    def write_bytes(self, location: Location, data: bytes) -> None:
        """Replace the file whole (atomically: readers see the old or the new content)."""
        if not location.is_gcs:
            path = Path(location.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
            return
        try:
            self._blob(location).upload_from_string(data, content_type="application/jsonl")
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable(f"cannot write {location.uri}") from err

    def delete(self, location: Location) -> None:
        if not location.is_gcs:
            Path(location.name).unlink(missing_ok=True)
            return
        try:
            self._blob(location).delete()
        except gexc.NotFound:
            pass
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable(f"cannot delete {location.uri}") from err

    def work_path(self, location: Location) -> Path:
        """A stable local path for a remote file's working copy (the same across reruns on one machine)."""
        self._work_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(location.uri.encode()).hexdigest()[:16]
        return self._work_dir / f"{digest}-{Path(location.name).name or 'file'}"

    def open_log(self, location: Location, *, checkpoint_seconds: float = 30.0) -> OutputLog:
        """The append-only output at `location`, recovered from what an earlier run left there."""
        if not location.is_gcs:
            path = Path(location.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            return OutputLog(path, uploader=None)
        path = self.work_path(location)
        remote = self.read_bytes(location)
        # The object is the durable state: a working copy left by another run on this machine may be
        # ahead of it, but it is just as valid (whole lines only), so keep whichever is longer.
        if remote is not None and (not path.exists() or path.stat().st_size < len(remote)):
            path.write_bytes(remote)
        elif remote is None:
            path.unlink(missing_ok=True)
        return OutputLog(path, uploader=lambda data: self.write_bytes(location, data),
                         checkpoint_seconds=checkpoint_seconds)


def repair_torn_tail(path: Path) -> int:
    """Cut a file after its last newline (a line torn by a crash); returns the bytes removed."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        keep, chunk = size, 65536
        while keep > 0:
            start = max(0, keep - chunk)
            f.seek(start)
            block = f.read(keep - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        if keep != size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


class OutputLog:
    """An append-only JSONL file: whole lines, flushed and fsynced one by one; optionally uploaded at
    checkpoints (see the module docstring)."""

    def __init__(self, path: Path, *, uploader: Any | None, checkpoint_seconds: float = 30.0) -> None:
        self.path = path
        self._uploader = uploader
        self._checkpoint_seconds = checkpoint_seconds
        self.repaired_bytes = repair_torn_tail(path)
        self._file = open(path, "ab")  # noqa: SIM115 - held open for the run, closed in close()
        self._lock = threading.Lock()
        self._dirty = self.repaired_bytes > 0
        self._last_upload = time.monotonic()

    def lines(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            yield from f

    def append(self, line: str) -> None:
        data = line.encode()
        with self._lock:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._dirty = True

    def checkpoint_due(self) -> bool:
        return (self._uploader is not None and self._dirty
                and time.monotonic() - self._last_upload >= self._checkpoint_seconds)

    def checkpoint(self) -> None:
        """Upload the whole lines written so far (blocking: call it from a worker thread)."""
        if self._uploader is None:
            return
        with self._lock:
            self._dirty = False
            data = self.path.read_bytes()
        try:
            self._uploader(data[: data.rfind(b"\n") + 1])
        except DependencyUnavailable:
            self._dirty = True
            raise
        self._last_upload = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class BucketInputs:
    """The BatchInputs port (jobs/batches.py) over BatchFiles: objects addressed by gs:// URI."""

    def __init__(self, files: BatchFiles) -> None:
        self._files = files

    def exists(self, uri: str, *, generation: str | None = None) -> bool:
        return self._files.exists(Location.parse(uri), generation=generation)

    def upload(self, uri: str, data: bytes) -> None:
        self._files.write_bytes(Location.parse(uri), data)

    def delete(self, uri: str) -> None:
        self._files.delete(Location.parse(uri))
