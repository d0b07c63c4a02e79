"""Cloud Storage's rules for object names, checked before a user-given name reaches the bucket (where a
broken one is an error of the storage API, not of the request)."""

from __future__ import annotations

import re

MAX_OBJECT_NAME_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # CR and LF are refused; the XML API refuses the other controls
_RESERVED_PREFIX = ".well-known/acme-challenge/"


def object_name_problem(name: str) -> str | None:
    """Why `name` cannot be an object's name, or None if it can."""
    if not name:
        return "the object name is empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_OBJECT_NAME_BYTES:
        return f"the object name is longer than {MAX_OBJECT_NAME_BYTES} bytes"
    if _CONTROL.search(name):
        return "the object name contains a control character"
    if name in (".", "..") or name.startswith(_RESERVED_PREFIX):
        return "the object name is reserved"
    return None
