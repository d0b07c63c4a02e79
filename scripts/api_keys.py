"""Create, revoke and list API keys (stored only as SHA-256 hashes in Firestore `api_keys`).

    python -m scripts.api_keys create --tenant acme [--name ci]     # prints the key, once
    python -m scripts.api_keys revoke --key llmq_...                # or --hash <sha256>
    python -m scripts.api_keys list [--tenant acme]

Against the local stack found in --state-dir (default .local) when it runs there, otherwise
against --project's Firestore with Application Default Credentials.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from jobs.adapters.api_key_store import FirestoreApiKeyStore
from jobs.auth import ApiKey, hash_key, new_key

REPO = Path(__file__).resolve().parents[1]


def create_key(store: FirestoreApiKeyStore, *, tenant: str, name: str = "") -> str:
    raw = new_key()
    store.create(ApiKey(key_hash=hash_key(raw), tenant=tenant, name=name, created_at=datetime.now(UTC)))
    return raw


def _store(args: argparse.Namespace) -> FirestoreApiKeyStore:
    from google.cloud import firestore

    state = args.state_dir / "stack.json"
    project = args.project
    if project is None and state.exists():
        info = json.loads(state.read_text())
        os.environ.update(info["env"])
        project = info["project"]
    if project is None:
        raise SystemExit("no local stack found: give --project")
    return FirestoreApiKeyStore(firestore.Client(project=project, database=args.database))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local")
    parser.add_argument("--project")
    parser.add_argument("--database", default="(default)")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    revoke = sub.add_parser("revoke")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--key")
    which.add_argument("--hash")
    listing = sub.add_parser("list")
    listing.add_argument("--tenant")
    args = parser.parse_args()
    store = _store(args)
    if args.command == "create":
        print(create_key(store, tenant=args.tenant, name=args.name))
    elif args.command == "revoke":
        key = store.revoke(args.hash or hash_key(args.key), at=datetime.now(UTC))
        raise SystemExit(0 if key is not None else "no such key")
    else:
        for key in store.list(args.tenant):
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.key_hash[:12]}…  tenant={key.tenant}  name={key.name!r}  {state}  created={key.created_at:%F}")


if __name__ == "__main__":
    main()
