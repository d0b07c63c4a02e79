"""Serve one Cloud Function locally: functions-framework's own app (`create_app`, as in Cloud
Functions) in a single threaded process, so that one pid serves the port (gunicorn, the framework's
default server, would add a supervisor process). The local stack hands it an already listening socket
(`--fd`, see scripts/processes.py); `--port` binds one here."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from functions_framework import create_app
from werkzeug.serving import ThreadedWSGIServer

from jobs.logs import configure_logging
from runner.__main__ import add_listen_arguments
from scripts.processes import LISTEN_BACKLOG


class _Server(ThreadedWSGIServer):
    # The listen backlog where this process binds (--port); an inherited socket (--fd) already listens with it.
    request_queue_size = LISTEN_BACKLOG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--source", required=True)
    add_listen_arguments(parser)
    args = parser.parse_args()
    configure_logging()
    server = _Server(args.host, args.port or 0, create_app(args.target, args.source), fd=args.fd)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
