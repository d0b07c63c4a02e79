"""The files function: OpenAI's Files API (CONTRACT §8) — POST /v1/files (multipart upload), GET /v1/files,
GET /v1/files/{id}, GET /v1/files/{id}/content, DELETE /v1/files/{id}; GET /openapi.json.

An upload is never whole in memory, nor on local disk (a Cloud Run instance's disk is its memory): the
multipart body is parsed as it arrives and the file's bytes go on to Cloud Storage in resumable chunks.
A download streams the object back a chunk at a time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any, cast
from urllib.parse import quote

import flask
import functions_framework
from werkzeug.datastructures import MultiDict
from werkzeug.formparser import FormDataParser

from jobs.adapters.caller import caller_tenant
from jobs.adapters.http import answer, install_json_errors, int_arg, json_response
from jobs.adapters.wiring import admission, file_service
from jobs.errors import InvalidRequest, MethodNotAllowed, NotFound, PayloadTooLarge, UnsupportedMediaType
from jobs.files import ContentWriter, FileService
from jobs.logs import configure_logging

configure_logging()  # structured JSON logs from the first request on
install_json_errors(functions_framework.errorhandler)

_FILE = re.compile(r"^/v1/files/([^/]+)$")
_CONTENT = re.compile(r"^/v1/files/([^/]+)/content$")
_MAX_FORM_FIELD_BYTES = 64 * 1024  # purpose, expires_after[...]: a few bytes each
_MAX_PARTS = 16


@functions_framework.http
def files(request: flask.Request) -> flask.Response:
    return answer(request, _route)


def _route(request: flask.Request, path: str) -> flask.Response:
    with admission().slot():  # refused at once, before any work, when the wait would be too long
        tenant = caller_tenant(request)  # authentication first: nothing is read or written before it
        if path == "/v1/files":
            if request.method == "POST":
                return json_response(_upload(request, tenant))
            _require(request, "GET", "POST")
            return json_response(file_service().list(
                tenant=tenant, purpose=request.args.get("purpose"), limit=int_arg(request, "limit"),
                after=request.args.get("after"), order=request.args.get("order")))
        if match := _CONTENT.match(path):
            _require(request, "GET")
            record, chunks = file_service().content(match.group(1), tenant=tenant)
            # The first chunk is read here, so a missing object is a 404, not a broken 200.
            first = next(chunks, b"")
            return flask.Response(_prepend(first, chunks), mimetype="application/octet-stream", headers={
                "Content-Length": str(record.bytes),
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(record.filename, safe='')}"})
        if match := _FILE.match(path):
            if request.method == "DELETE":
                return json_response(file_service().delete(match.group(1), tenant=tenant))
            _require(request, "GET", "DELETE")
            return json_response(file_service().get(match.group(1), tenant=tenant).view())
    raise NotFound(f"no route for {path}")


def _upload(request: flask.Request, tenant: str) -> dict[str, Any]:
    service = file_service()
    if request.content_length is not None and request.content_length > service.max_bytes:
        raise PayloadTooLarge(f"an upload may be at most {service.max_bytes} bytes")
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("upload a file as multipart/form-data (fields `file` and `purpose`)")
    file_id, uri = service.begin_upload()
    sink = _UploadSink(service, uri)
    parser = FormDataParser(stream_factory=sink.open, max_form_memory_size=_MAX_FORM_FIELD_BYTES,
                            max_form_parts=_MAX_PARTS, silent=False, cls=MultiDict)
    try:
        _, form, parts = parser.parse(request.stream, request.mimetype, request.content_length,
                                      request.mimetype_params)
    except ValueError as err:
        sink.abort()
        raise InvalidRequest(f"the multipart body is malformed: {str(err)[:200]}", code="invalid_multipart") from None
    except BaseException:
        sink.abort()
        raise
    if not sink.finished:
        sink.abort()
        if sink.opened:
            raise InvalidRequest("the body ended inside the file part", code="invalid_multipart")
    if list(parts.keys()) not in ([], ["file"]):
        service.discard(uri)
        raise InvalidRequest("the file goes in one part named `file`", code="invalid_multipart",
                             details=[{"field": "file", "code": "invalid", "message": "one part named file"}])
    if any(not name for name in form):
        service.discard(uri)
        raise InvalidRequest("every part of the form needs a name", code="invalid_multipart")
    duplicates = sorted(name for name in form if len(form.getlist(name)) > 1)
    if duplicates:
        service.discard(uri)
        raise InvalidRequest(f"form field(s) given twice: {', '.join(duplicates)}")
    upload = parts.get("file")
    filename = None if upload is None else (upload.filename or "")
    return service.finish_upload(file_id=file_id, uri=uri, written=sink.written, filename=filename,
                                 form=dict(form.items()), tenant=tenant).view()


class _UploadSink:
    """The file part's destination, as werkzeug's parser wants it: a stream it writes into and then seeks
    to 0 once the part is complete — which is where the upload is committed."""

    def __init__(self, service: FileService, uri: str) -> None:
        self._service = service
        self._uri = uri
        self._writer: ContentWriter | None = None
        self.opened = False
        self.finished = False

    @property
    def written(self) -> int:
        return self._writer.written if self._writer is not None else 0

    def open(self, total_content_length: int | None, content_type: str | None, filename: str | None,  # noqa: ARG002
             content_length: int | None = None) -> IO[bytes]:  # noqa: ARG002 (werkzeug's stream factory)
        if self.opened:
            raise InvalidRequest("only one file per upload", code="invalid_multipart")
        self.opened = True
        self._writer = self._service.writer(self._uri)
        return cast(IO[bytes], self)  # only write() and seek(0) are called on it

    def write(self, data: bytes) -> int:
        assert self._writer is not None
        return self._writer.write(data)

    def seek(self, _offset: int) -> int:
        assert self._writer is not None
        self._writer.finish()
        self.finished = True
        return 0

    def abort(self) -> None:
        if self._writer is not None and not self.finished:
            self._writer.abort()
        elif self.finished:
            self._service.discard(self._uri)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _require(request: flask.Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(f"{request.method} is not allowed here; use {' or '.join(methods)}")
