"""What Google's client libraries raise when a call fails, in one place: every adapter turns these into
DependencyUnavailable (503 with Retry-After), never a 500, after catching first the classes it expects
(Conflict, NotFound, FailedPrecondition). Requests-based clients (Cloud Storage) raise OSError subclasses
for connection failures; gRPC ones raise GoogleAPICallError; google-auth raises TransportError."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions

from jobs.errors import DependencyUnavailable

CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    gexc.GoogleAPICallError, gexc.RetryError, auth_exceptions.TransportError, OSError)


@contextmanager
def unavailable_as(message: str) -> Iterator[None]:
    """Turn the client errors of the block into DependencyUnavailable(message); the classes a caller expects
    (Conflict, NotFound) are caught inside the block, before they get here."""
    try:
        yield
    except CLIENT_ERRORS as err:
        raise DependencyUnavailable(message) from err
