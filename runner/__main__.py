"""`python -m runner --port N`: serve the runner with uvicorn in one process."""

from __future__ import annotations

import argparse

import uvicorn

from jobs.logs import configure_logging
from runner.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    configure_logging()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
