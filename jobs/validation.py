"""The one translation of a pydantic ValidationError into field-level details, for the API's 400s and for
a batch file's rejected lines alike: `field` is a path a client recognises (`messages[0].content`,
`metadata.my key`), `code` pydantic's error type, except an unknown field, which is `unsupported_parameter`
as OpenAI says."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

UNSUPPORTED_PARAMETER = "unsupported_parameter"

# Where a value may take several shapes (a union, or a validator wrapped around a type), pydantic names the
# branch in the location (`str`, `list[constrained-str]`, `function-after[_check()]`), and a dict key
# that fails is marked `[key]`: none of them is a field.
_BRANCH_TAG = re.compile(r"^(?:\[key\]|[a-z]+(?:-[a-z]+)*\[.*\]|constrained-[a-z]+|str|int|float|bool|bytes|none)$")


@dataclass(frozen=True)
class FieldError:
    field: str | None  # None: the body as a whole (a model-level rule)
    code: str
    message: str

    def as_detail(self) -> dict[str, Any]:
        return {"field": self.field, "code": self.code, "message": self.message}


def field_errors(err: ValidationError) -> list[FieldError]:
    errors = []
    for e in err.errors(include_url=False, include_input=False):
        field = field_path(e["loc"])
        if e["type"] == "extra_forbidden":
            errors.append(FieldError(field, UNSUPPORTED_PARAMETER, f"unrecognised request argument: {field}"))
        else:
            errors.append(FieldError(field or None, e["type"], e["msg"]))
    return errors


def unsupported_fields(errors: list[FieldError]) -> list[str]:
    return [str(e.field) for e in errors if e.code == UNSUPPORTED_PARAMETER]


def field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _BRANCH_TAG.match(part):
            path += f".{part}" if path else part
    return path
