"""A test double at the gRPC layer: a Firestore client on the real emulator whose chosen calls fail with a
chosen status code, as the service answers under load (Cancelled, Aborted, ...), which the emulator
cannot be made to do on demand. Everything above the channel — the client library turning the status
into an exception, its retries, our adapters — is the real code."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc


class _Failure(grpc.RpcError, grpc.Call):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__()
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"injected {self._code.name}"

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def initial_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def result(self, timeout: float | None = None) -> Any:  # a unary call's outcome, as grpc's chain asks for it
        raise self

    def __iter__(self) -> _Failure:  # a streaming call's responses: the first one fails
        return self

    def __next__(self) -> Any:
        raise self


class FaultInjector(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Fails the next `times` calls of a method (its last path segment, e.g. "Commit") with `code`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[grpc.StatusCode, int]] = {}
        self.injected: list[tuple[str, grpc.StatusCode]] = []
        self.calls: list[str] = []  # every call's method, in order

    def fail(self, method: str, code: grpc.StatusCode, *, times: int = 1) -> None:
        with self._lock:
            self._faults[method] = (code, times)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self.intercept_unary_unary(continuation, details, request)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        with self._lock:
            self.calls.append(method)
            fault = self._faults.get(method)
            if fault is not None:
                code, times = fault
                if times <= 1:
                    del self._faults[method]
                else:
                    self._faults[method] = (code, times - 1)
                self.injected.append((method, code))
        if fault is not None:
            return _Failure(fault[0])  # what grpc's chain expects of a failed call: raised by result()
        return continuation(details, request)


def faulty_firestore(project: str, injector: FaultInjector) -> Any:
    """A Firestore client for the emulator (FIRESTORE_EMULATOR_HOST set) with `injector` on its channel."""
    from google.cloud import firestore

    client = firestore.Client(project=project)
    make_channel = client._emulator_channel
    client._emulator_channel = (  # type: ignore[method-assign]  # the test double's seam in the real client
        lambda transport: grpc.intercept_channel(make_channel(transport), injector))
    return client
