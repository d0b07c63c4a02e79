"""openapi.yaml's request and job schemas, generated from the pydantic models that validate them.

    python -m scripts.openapi          # rewrite the generated part of openapi.yaml
    python -m scripts.openapi --check  # exit 1 when openapi.yaml differs from what the models say

Everything in openapi.yaml above MARKER is written by hand (paths, responses, the error, model-list and
batch schemas, which have no model). Everything below it is this script's output: the models' own
`model_json_schema()`, rewritten into OpenAPI 3.0 (nullable, legacy exclusive bounds, component refs),
plus the two things JSON Schema cannot see: the rules the models check in their validators (with the
models' constants) and a sentence on what some fields mean. tests/test_openapi.py fails when the
committed file differs, so the document cannot drift from what the API accepts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from jobs.batch_service import CreateBatchRequest
from jobs.models import MAX_METADATA_PAIRS, MAX_STOP_SEQUENCES, JobRequest, JobView

REPO = Path(__file__).resolve().parents[1]
DOCUMENT = REPO / "openapi.yaml"
MARKER = ("    # Generated from the pydantic models by scripts/openapi.py: edit the models, then run\n"
          "    # `python -m scripts.openapi`. Nothing below this line is written by hand.\n")

# Document name → (model, whether it is a request body). Models these refer to ($defs) are emitted
# under their class names.
MODELS: dict[str, tuple[type[BaseModel], bool]] = {
    "JobRequest": (JobRequest, True),
    "BatchRequest": (CreateBatchRequest, True),
    "Job": (JobView, False),
}

# What a field means, where its type does not say it. (schema, field or None for the schema itself).
DESCRIPTIONS: dict[tuple[str, str | None], str] = {
    ("JobRequest", None): "OpenAI-compatible; exactly one of `messages` and `prompt`. Any other field is 400 "
                          "`unsupported_parameter`.",
    ("JobRequest", "model"): "one of GET /v1/models; the default when absent",
    ("JobRequest", "max_tokens"): "at most the model's max_tokens",
    ("JobRequest", "stream"): "write partial output to the job while it generates (about once a second)",
    ("JobRequest", "ttl_seconds"): "how long the job and its result are kept",
    ("JobRequest", "deadline_seconds"): "a job not started within this many seconds ends `cancelled` with error "
                                        "`deadline_exceeded`",
    ("BatchRequest", None): "Exactly one of `input_file_id` (OpenAI's, with `endpoint`), `input_uri` and "
                            "`input_jsonl`. Any other field is 400 `unsupported_parameter`.",
    ("BatchRequest", "input_file_id"): "a file of POST /v1/files with purpose `batch`",
    ("BatchRequest", "endpoint"): "the url of every line (a line with another is an error line); required with "
                                  "input_file_id",
    ("BatchRequest", "input_uri"): "gs://<batch bucket>/<object>, outside inbox/, outbox/, processed/ and failed/; "
                                   "must exist",
    ("BatchRequest", "input_jsonl"): "the JSONL file itself",
    ("BatchRequest", "completion_window"): "OpenAI's \"24h\", or a duration `<n>s|m|h|d` up to 7 days: by "
                                           "`expires_at` the batch is finished or ends `expired`",
    ("Job", None): "The job view: every field is always present.",
    ("Job", "output"): "generated text (a bounded prefix; the full text is in result_uri)",
    ("Job", "result_uri"): "gs://<results bucket>/results/<job id>.json",
    ("Job", "metrics"): "queue_seconds, time_to_first_token_seconds, generation_seconds, tokens_per_second",
    ("Job", "deadline_at"): "from deadline_seconds: a job not started by then ends `cancelled`",
}


def validator_rules(schemas: dict[str, Any]) -> None:
    """The bounds JobRequest and CreateBatchRequest check in their model validators."""
    job = schemas["JobRequest"]["properties"]
    _branch(job["stop"], "array")["maxItems"] = MAX_STOP_SEQUENCES
    job["metadata"]["maxProperties"] = MAX_METADATA_PAIRS
    schemas["BatchRequest"]["properties"]["metadata"]["maxProperties"] = MAX_METADATA_PAIRS


def component_schemas() -> dict[str, Any]:
    """Every generated component schema, by name, in OpenAPI 3.0 form."""
    schemas: dict[str, Any] = {}
    for name, (model, is_request) in MODELS.items():
        raw = model.model_json_schema(mode="validation" if is_request else "serialization")
        for def_name, definition in raw.pop("$defs", {}).items():
            schemas[def_name] = _openapi30(definition, response=not is_request)
        schema = _openapi30(raw, response=not is_request)
        if not is_request:  # model_dump writes every field, defaulted or not
            schema["required"] = list(schema["properties"])
        schemas[name] = schema
    validator_rules(schemas)
    for (name, field), text in DESCRIPTIONS.items():
        target = schemas[name] if field is None else schemas[name]["properties"][field]
        target["description"] = text
    return {name: _ordered(schema) for name, schema in schemas.items()}


def render(document: str) -> str:
    """`document` (the text of openapi.yaml) with its generated part rewritten."""
    head, found, _ = document.partition(MARKER)
    if not found:
        raise ValueError("openapi.yaml has no generated section (its marker comment is missing)")
    body = yaml.dump(component_schemas(), Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)
    return head + MARKER + "".join(f"    {line}\n" for line in body.splitlines())


def _openapi30(schema: Any, *, response: bool) -> Any:
    """Pydantic's JSON Schema (2020-12) as an OpenAPI 3.0 Schema Object."""
    if isinstance(schema, list):
        return [_openapi30(item, response=response) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" or (key == "default" and (value is None or response)):
            continue
        if key == "$ref":
            out[key] = value.replace("#/$defs/", "#/components/schemas/")
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "patternProperties":  # OpenAPI 3.0 has no key patterns: the values' schema, the keys in words
            ((pattern, values),) = value.items()
            out["additionalProperties"] = _openapi30(values, response=response)
            out["description"] = f"keys match `{pattern}`"
        elif key == "properties":
            out[key] = {name: _openapi30(prop, response=response) for name, prop in value.items()}
        else:
            out[key] = _openapi30(value, response=response)
    branches = out.get("anyOf")
    if branches and {"type": "null"} in branches:
        rest = [b for b in branches if b != {"type": "null"}]
        del out["anyOf"]
        if len(rest) > 1:
            out["anyOf"] = rest
        elif "$ref" in rest[0]:
            out["allOf"] = rest  # a $ref takes no siblings in 3.0
        else:
            out = {**rest[0], **out}
        out["nullable"] = True
    return out


def _branch(schema: dict[str, Any], kind: str) -> dict[str, Any]:
    (branch,) = [b for b in schema["anyOf"] if b.get("type") == kind]
    return branch


_ORDER = ("type", "format", "enum", "nullable", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
          "minLength", "maxLength", "minItems", "maxItems", "maxProperties", "default", "description",
          "additionalProperties", "required", "items", "allOf", "anyOf", "properties")


def _ordered(schema: Any) -> Any:
    """Keys in reading order (type and bounds first, properties last) instead of pydantic's alphabetical one."""
    if isinstance(schema, list):
        return [_ordered(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rank = {key: i for i, key in enumerate(_ORDER)}
    out: dict[str, Any] = {}
    for key in sorted(schema, key=lambda key: rank.get(key, len(_ORDER))):
        value = schema[key]
        out[key] = {name: _ordered(prop) for name, prop in value.items()} if key == "properties" else _ordered(value)
    return out


class _Dumper(yaml.SafeDumper):
    """Short schemas of scalars on one line (`{type: string, minLength: 1}`), everything else in blocks."""


def _mapping(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    scalars = all(not isinstance(v, (dict, list)) or (isinstance(v, list) and not any(isinstance(i, dict) for i in v))
                  for v in data.values())
    flow = scalars and len(yaml.safe_dump(data, default_flow_style=True, sort_keys=False, width=1000)) <= 80
    return dumper.represent_mapping("tag:yaml.org,2002:map", list(data.items()), flow_style=flow)


def _sequence(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                     flow_style=not any(isinstance(i, (dict, list)) for i in data))


_Dumper.add_representer(dict, _mapping)
_Dumper.add_representer(list, _sequence)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when openapi.yaml is not up to date")
    args = parser.parse_args(argv)
    current = DOCUMENT.read_text()
    generated = render(current)
    if args.check:
        if generated != current:
            print("openapi.yaml differs from the models: run python -m scripts.openapi", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.write_text(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
