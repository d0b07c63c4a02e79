"""`python -m runner --port N`: serve the runner with uvicorn in one process. The local stack hands it an
already listening socket instead (`--fd N`, see scripts/processes.py), which a restarted runner serves again."""

from __future__ import annotations

import argparse
import socket
import sys

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE

from jobs.logs import configure_logging


def serve(app: Starlette, *, host: str, port: int, fd: int | None = None) -> None:
    """Serve `app` on host:port, or on the inherited listening socket `fd` when given."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5)
    # Not uvicorn's own `fd=`: it takes the socket for a Unix one (socket.fromfd(fd, AF_UNIX, ...)), so asyncio
    # would neither set TCP_NODELAY nor see TCP peers. A socket object made from the descriptor has its family.
    sockets = None if fd is None else [socket.socket(fileno=fd)]
    server = uvicorn.Server(config)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    if not server.started:  # as uvicorn.run: a start-up failure exits non-zero
        sys.exit(STARTUP_FAILURE)


def add_listen_arguments(parser: argparse.ArgumentParser, *, default_port: int | None = None) -> None:
    """--host, and where to serve: --port, or --fd (an inherited listening socket; scripts/processes.py).
    Without a default port one of the two is required."""
    parser.add_argument("--host", default="127.0.0.1")
    where = parser.add_mutually_exclusive_group(required=default_port is None)
    where.add_argument("--port", type=int, default=default_port)
    where.add_argument("--fd", type=int, help="serve this inherited listening socket instead of binding a port")


def main() -> None:
    from runner.app import create_app  # here, not above: `serve` alone needs none of the runner's imports

    parser = argparse.ArgumentParser(description=__doc__)
    add_listen_arguments(parser, default_port=8080)
    args = parser.parse_args()
    configure_logging()
    serve(create_app(), host=args.host, port=args.port, fd=args.fd)


if __name__ == "__main__":
    main()
