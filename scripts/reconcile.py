"""Run the reconciler once against the local stack: `python -m scripts.reconcile [--state-dir .local]`.
Calls the stack's reconcile function (the same code Cloud Scheduler calls in production)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

from scripts.stack_client import Stack

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local")
    args = parser.parse_args()
    stack = Stack.load(args.state_dir)
    response = httpx.post(f"{stack.info['reconcile_url']}/", timeout=120)
    print(json.dumps(response.json(), indent=2))
    raise SystemExit(0 if response.status_code == 200 else 1)


if __name__ == "__main__":
    main()
