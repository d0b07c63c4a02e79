"""Batches (`client.batches`): create one from a local JSONL file or a gs:// object, watch its
request_counts, read its result lines, cancel it. A local file whose lines all name one endpoint is
uploaded (POST /v1/files) and batched by its `input_file_id`, as OpenAI's SDK does; one that mixes chat and
completion lines goes inline (llmq's `input_jsonl`). Results are read from `output_file_id` when the server
names one, otherwise from the gs:// `output_uri` (which needs Cloud Storage access: a local stack's emulator,
or Application Default Credentials)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmq import _core
from llmq.errors import ConfigurationError, WaitTimeoutError
from llmq.types import Batch

if TYPE_CHECKING:
    from llmq.aio import AsyncClient
    from llmq.client import Client
    from llmq.config import Config

BATCH_POLL_MAX_SECONDS = 5.0


def create_body(file: str | os.PathLike[str] | None, input_uri: str | None,
                metadata: dict[str, str] | None) -> dict[str, Any]:
    """The body of POST /v1/batches for a gs:// object, or for a local file sent inline."""
    if (file is None) == (input_uri is None):
        raise ValueError("give exactly one of file and input_uri")
    body: dict[str, Any] = {"input_uri": input_uri} if input_uri else {"input_jsonl": Path(file or "").read_text()}
    if metadata:
        body["metadata"] = metadata
    return body


def single_endpoint(file: str | os.PathLike[str]) -> str | None:
    """The one `url` every line of the file names (an OpenAI batch has one endpoint), else None."""
    urls: set[str] = set()
    with open(file, "rb") as lines:
        for raw in lines:
            try:
                url = json.loads(raw).get("url") if raw.strip() else None
            except (ValueError, AttributeError):
                continue  # the server puts it in the error file
            if isinstance(url, str):
                urls.add(url)
    return next(iter(urls)) if len(urls) == 1 else None


def upload_parts(file: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The multipart form of POST /v1/files (the bytes read once, so that a retry sends them again)."""
    path = Path(file)
    return {"file": (path.name, path.read_bytes(), "application/jsonl")}, {"purpose": "batch"}


def file_batch_body(file_id: str, endpoint: str, metadata: dict[str, str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"input_file_id": file_id, "endpoint": endpoint}
    if metadata:
        body["metadata"] = metadata
    return body


def _lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def read_result_file(client: Client, batch: Batch, which: str) -> str:
    """The text of the batch's output (`which="output"`) or error file ("" when there is none yet)."""
    file_id = batch.extra(f"{which}_file_id")
    if file_id:
        response = client._http.get(f"/v1/files/{file_id}/content")
        _core.parse_bytes(response)
        return response.text
    uri = batch.output_uri if which == "output" else batch.error_uri
    return read_gcs(client.config, uri) if uri else ""


def read_gcs(config: Config, uri: str) -> str:
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri}")
    try:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage  # type: ignore[attr-defined]
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ConfigurationError("reading gs:// results needs google-cloud-storage (pip install 'llmq[gcp]')") from err
    bucket, _, name = uri[len("gs://"):].partition("/")
    if config.storage_env:
        os.environ.update(config.storage_env)  # the client reads the emulator's address from the environment only
        gcs = storage.Client(project=config.firestore.project if config.firestore else "local",
                             credentials=AnonymousCredentials())
    else:
        gcs = storage.Client()
    try:
        blob = gcs.bucket(bucket).blob(name)
        return str(blob.download_as_text()) if blob.exists() else ""
    finally:
        gcs.close()


class Batches:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, file: str | os.PathLike[str] | None = None, *, input_uri: str | None = None,
               metadata: dict[str, str] | None = None) -> Batch:
        """Start a batch from a local OpenAI-format JSONL file or a gs:// object of the batch bucket."""
        endpoint = single_endpoint(file) if file is not None and input_uri is None else None
        if file is not None and endpoint is not None:
            files, form = upload_parts(file)
            uploaded = self._client.request("POST", "/v1/files", files=files, data=form)
            body = file_batch_body(uploaded["id"], endpoint, metadata)
        else:
            body = create_body(file, input_uri, metadata)
        return Batch.model_validate(self._client.request("POST", "/v1/batches", json=body))

    def get(self, batch_id: str) -> Batch:
        return Batch.model_validate(self._client.request("GET", f"/v1/batches/{batch_id}"))

    def cancel(self, batch_id: str) -> Batch:
        return Batch.model_validate(self._client.request("POST", f"/v1/batches/{batch_id}/cancel"))

    def list(self, *, limit: int = 20) -> list[Batch]:
        """The tenant's batches, newest first (GET /v1/batches: OpenAI's list shape)."""
        return [Batch.model_validate(b) for b in self._client.request("GET", "/v1/batches",
                                                                        params={"limit": limit})["data"]]

    def wait(self, batch_id: str, timeout: float | None = None, *,
             on_update: Callable[[Batch], None] | None = None) -> Batch:
        """The batch once final, polling with backoff; `on_update` sees every change of status or counts."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause, last = _core.POLL_MIN_SECONDS, None
        while True:
            batch = self.get(batch_id)
            seen = (batch.status, batch.request_counts)
            if seen != last:
                last, pause = seen, _core.POLL_MIN_SECONDS
                if on_update:
                    on_update(batch)
            if batch.done:
                return batch
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(batch_id, timeout or 0)
            time.sleep(pause)
            pause = min(pause * 2, BATCH_POLL_MAX_SECONDS)

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The output lines (`{"id", "custom_id", "response", "error"}`) written so far."""
        yield from _lines(read_result_file(self._client, self.get(batch_id), "output"))

    def errors(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The error lines (`{"id", "custom_id", "response": null, "error": {"code", "message", "line"}}`)."""
        yield from _lines(read_result_file(self._client, self.get(batch_id), "error"))


class AsyncBatches:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, file: str | os.PathLike[str] | None = None, *, input_uri: str | None = None,
                     metadata: dict[str, str] | None = None) -> Batch:
        endpoint = await asyncio.to_thread(single_endpoint, file) if file is not None and input_uri is None else None
        if file is not None and endpoint is not None:
            files, form = await asyncio.to_thread(upload_parts, file)
            uploaded = await self._client.request("POST", "/v1/files", files=files, data=form)
            body = file_batch_body(uploaded["id"], endpoint, metadata)
        else:
            body = await asyncio.to_thread(create_body, file, input_uri, metadata)
        return Batch.model_validate(await self._client.request("POST", "/v1/batches", json=body))

    async def get(self, batch_id: str) -> Batch:
        return Batch.model_validate(await self._client.request("GET", f"/v1/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> Batch:
        return Batch.model_validate(await self._client.request("POST", f"/v1/batches/{batch_id}/cancel"))

    async def list(self, *, limit: int = 20) -> list[Batch]:
        body = await self._client.request("GET", "/v1/batches", params={"limit": limit})
        return [Batch.model_validate(b) for b in body["data"]]

    async def wait(self, batch_id: str, timeout: float | None = None, *,
                   on_update: Callable[[Batch], None] | None = None) -> Batch:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause, last = _core.POLL_MIN_SECONDS, None
        while True:
            batch = await self.get(batch_id)
            seen = (batch.status, batch.request_counts)
            if seen != last:
                last, pause = seen, _core.POLL_MIN_SECONDS
                if on_update:
                    on_update(batch)
            if batch.done:
                return batch
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(batch_id, timeout or 0)
            await asyncio.sleep(pause)
            pause = min(pause * 2, BATCH_POLL_MAX_SECONDS)

    async def _file(self, batch_id: str, which: str) -> str:
        batch = await self.get(batch_id)
        file_id = batch.extra(f"{which}_file_id")
        if file_id:
            response = await self._client._http.get(f"/v1/files/{file_id}/content")
            _core.parse_bytes(response)
            return response.text
        uri = batch.output_uri if which == "output" else batch.error_uri
        return await asyncio.to_thread(read_gcs, self._client.config, uri) if uri else ""

    async def results(self, batch_id: str) -> AsyncIterator[dict[str, Any]]:
        for line in _lines(await self._file(batch_id, "output")):
            yield line

    async def errors(self, batch_id: str) -> AsyncIterator[dict[str, Any]]:
        for line in _lines(await self._file(batch_id, "error")):
            yield line
