"""The one routing table of the API: which function serves which operation, read from `openapi.yaml`
(each operation's `x-llmq-function`). The local front door (scripts/gateway.py) routes by it, and the
production gateway's config (API Gateway, pulumi/llmq_infra/gateway.py) is generated from the same
document by `gateway_document`. Pure: no HTTP server, no cloud client."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FUNCTION_KEY = "x-llmq-function"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_PARAMETER = re.compile(r"\{[^/{}]+\}")


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # the OpenAPI template, e.g. /v1/jobs/{id}
    methods: Mapping[str, str]  # HTTP method (upper case) -> function name

    @property
    def pattern(self) -> re.Pattern[str]:
        parts = _PARAMETER.split(self.path)  # the literal pieces between {parameters}
        return re.compile("^" + "[^/]+".join(re.escape(part) for part in parts) + "$")


@dataclass(frozen=True, slots=True)
class RouteMatch:
    function: str | None  # None: the path exists, the method does not (405)
    allowed: tuple[str, ...]


class RoutingTable:
    def __init__(self, routes: list[Route]) -> None:
        # Literal segments before templates, as API Gateway does: /v1/files/x/content before /v1/files/{id}.
        self._routes = [(route, route.pattern) for route in sorted(routes, key=lambda r: r.path.count("{"))]

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RoutingTable:
        routes = []
        for path, item in document.get("paths", {}).items():
            methods = {method.upper(): str(operation[FUNCTION_KEY]) for method, operation in item.items()
                       if method in METHODS}
            routes.append(Route(path, methods))
        return cls(routes)

    def functions(self) -> set[str]:
        return {function for route, _ in self._routes for function in route.methods.values()}

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The function for `method path`; None: no such path."""
        path = path.rstrip("/") or "/"
        for route, pattern in self._routes:
            if pattern.match(path):
                methods = route.methods
                function = methods.get(method.upper()) or (methods.get("GET") if method.upper() == "HEAD" else None)
                return RouteMatch(function, tuple(sorted(methods)))
        return None


def check_document(document: Mapping[str, Any]) -> None:
    """Every operation names its function. Raises ValueError naming the ones that do not."""
    missing = [f"{method.upper()} {path}" for path, item in document.get("paths", {}).items()
               for method, operation in item.items() if method in METHODS and FUNCTION_KEY not in operation]
    if missing:
        raise ValueError(f"operations without {FUNCTION_KEY}: {', '.join(missing)}")


def gateway_document(document: Mapping[str, Any], addresses: Mapping[str, str], *,
                     deadlines: Mapping[str, float], title: str | None = None) -> dict[str, Any]:
    """The API Gateway config: the API document with each operation's `x-google-backend` (its function's
    URL, the request path appended, the function's deadline). Authentication stays in the functions (the
    key or token is passed through unchanged, `disable_auth`), so the gateway declares no security of its own."""
    check_document(document)
    gateway = copy.deepcopy(dict(document))
    gateway.pop("security", None)
    gateway.pop("servers", None)
    gateway.get("components", {}).pop("securitySchemes", None)
    if title:
        gateway["info"] = {**gateway.get("info", {}), "title": title}
    for item in gateway.get("paths", {}).values():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            operation.pop("security", None)
            function = operation.pop(FUNCTION_KEY)
            operation["x-google-backend"] = {
                "address": addresses[function],
                "path_translation": "APPEND_PATH_TO_ADDRESS",
                "deadline": float(deadlines.get(function, 60.0)),
                "disable_auth": True,
            }
    return gateway
