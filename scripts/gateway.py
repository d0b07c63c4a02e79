"""The local stack's front door: every route of `openapi.yaml` on one port, as API Gateway serves them in
production. Routing comes from the same document (jobs/routes.py, each operation's `x-llmq-function`);
requests and responses stream through (uploads, server-sent events), nothing is buffered whole.

    python -m scripts.gateway --fd N --function submit=http://127.0.0.1:P1 --function status=http://...
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jobs.adapters.http import error_headers, openapi_document
from jobs.errors import DependencyUnavailable, MethodNotAllowed, NotFound, PlatformError
from jobs.logs import configure_logging
from jobs.routes import RoutingTable
from runner.__main__ import add_listen_arguments, serve  # uvicorn on a port or an inherited socket

# Per RFC 9110 §7.6.1 these describe one connection, not the message: never forwarded.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "host"})


def create_app(table: RoutingTable, addresses: Mapping[str, str]) -> Starlette:
    missing = table.functions() - set(addresses)
    if missing:
        raise ValueError(f"no address for the function(s) {', '.join(sorted(missing))}")
    # No read timeout: a completion may wait minutes, a stream stays open; the functions bound their own waits.
    client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0), follow_redirects=False)

    async def forward(request: Request) -> Response:
        found = table.match(request.method, request.url.path)
        if found is None:
            return _error(NotFound(f"no route for {request.url.path}"))
        if found.function is None:
            return _error(MethodNotAllowed(f"{request.method} is not allowed here; use {' or '.join(found.allowed)}"))
        url = addresses[found.function] + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        body: AsyncIterator[bytes] | None = _body(request) if _has_body(request) else None
        upstream_request = client.build_request(request.method, url, headers=headers, content=body)
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.TransportError:
            return _error(DependencyUnavailable(f"the {found.function} function is not answering"))
        response_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=response_headers,
                                 background=BackgroundTask(upstream.aclose))

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def _error(err: PlatformError) -> JSONResponse:
    return JSONResponse(err.to_body(), status_code=err.status, headers=error_headers(err))


def _has_body(request: Request) -> bool:
    return "content-length" in request.headers or "transfer-encoding" in request.headers


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--function", action="append", default=[], metavar="NAME=URL", required=True)
    add_listen_arguments(parser)
    args = parser.parse_args()
    configure_logging()
    addresses = dict(item.split("=", 1) for item in args.function)
    serve(create_app(RoutingTable.from_document(openapi_document()), addresses),
          host=args.host, port=args.port or 0, fd=args.fd)


if __name__ == "__main__":
    main()
