"""Serve one Cloud Function locally: functions-framework's own app (`create_app`, as in Cloud
Functions) in a single threaded process, so that one pid serves the port (gunicorn, the framework's
default server, would add a supervisor process)."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from functions_framework import create_app
from werkzeug.serving import ThreadedWSGIServer

from jobs.logs import configure_logging


class _Server(ThreadedWSGIServer):
    # The listen backlog: 500 clients connecting at once overflow werkzeug's 128, and a connection dropped
    # from a full backlog surfaces at the client as a read error (25 of 2,000 submissions at 500 clients).
    request_queue_size = 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    configure_logging()
    server = _Server(args.host, args.port, create_app(args.target, args.source))

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
