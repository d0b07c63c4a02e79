"""Where the client finds its server: arguments first, then LLMQ_BASE_URL / LLMQ_API_KEY, then a running
local stack's stack.json (LLMQ_STACK_JSON, else ./.local/stack.json). Read once, when a client is made."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmq.errors import ConfigurationError

DEFAULT_STACK_JSON = Path(".local") / "stack.json"


@dataclass(frozen=True)
class FirestoreAccess:
    """What a client needs to watch job documents itself: the project, and the emulator's address when
    the database is a local stack's emulator (None for a real project, read with Application Default
    Credentials)."""

    project: str
    database: str = "(default)"
    emulator_host: str | None = None  # FIRESTORE_EMULATOR_HOST


@dataclass(frozen=True)
class Config:
    base_url: str
    api_key: str | None
    firestore: FirestoreAccess | None = None
    storage_env: dict[str, str] = field(default_factory=dict)  # the GCS emulator, for batch results locally
    stack: dict[str, Any] | None = None  # the stack.json it came from, if any


def stack_json_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get("LLMQ_STACK_JSON") or DEFAULT_STACK_JSON)


def load_stack(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def resolve(base_url: str | None = None, api_key: str | None = None, *,
            stack_json: str | os.PathLike[str] | None = None, firestore_project: str | None = None) -> Config:
    """The configuration from the arguments, the environment, or a local stack. Raises ConfigurationError
    when no base URL is found anywhere."""
    base_url = base_url or os.environ.get("LLMQ_BASE_URL")
    api_key = api_key or os.environ.get("LLMQ_API_KEY")
    firestore_project = firestore_project or os.environ.get("LLMQ_FIRESTORE_PROJECT")
    stack: dict[str, Any] | None = None
    if base_url is None or stack_json is not None:
        path = stack_json_path(stack_json)
        stack = load_stack(path)
        if stack is None and base_url is None:
            raise ConfigurationError(
                f"no server configured: pass base_url, set LLMQ_BASE_URL, or start a local stack ({path} not found)")
    firestore: FirestoreAccess | None = None
    storage_env: dict[str, str] = {}
    if stack is not None:
        base_url = base_url or str(stack["api_url"])
        api_key = api_key or stack.get("api_key")
        env = {str(k): str(v) for k, v in dict(stack.get("env", {})).items()}
        firestore = FirestoreAccess(project=str(stack["project"]), emulator_host=env.get("FIRESTORE_EMULATOR_HOST"))
        storage_env = {k: v for k, v in env.items() if k == "STORAGE_EMULATOR_HOST"}
    if firestore_project:
        firestore = FirestoreAccess(project=firestore_project)
    assert base_url is not None
    return Config(base_url=base_url.rstrip("/"), api_key=api_key, firestore=firestore, storage_env=storage_env,
                  stack=stack)
