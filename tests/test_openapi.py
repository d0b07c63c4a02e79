"""openapi.yaml against the models (fast, no stack): its request and job schemas are what
scripts/openapi.py generates from the pydantic models, the rules it adds by hand are the ones the
models enforce, and the document the functions serve is that file and loads as OpenAPI."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from pydantic import BaseModel, ValidationError

from jobs.adapters.http import openapi_document
from jobs.batch_service import CreateBatchRequest
from jobs.models import MAX_METADATA_PAIRS, MAX_STOP_SEQUENCES, JobRequest
from scripts import openapi

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # schemathesis' own dependencies


def test_openapi_yaml_is_what_the_models_generate() -> None:
    current = openapi.DOCUMENT.read_text()
    assert openapi.render(current) == current, "openapi.yaml differs from the models: run python -m scripts.openapi"


def test_every_model_schema_is_in_the_served_document() -> None:
    served = openapi_document()["components"]["schemas"]
    generated = openapi.component_schemas()
    assert {name: served.get(name) for name in generated} == generated


def test_every_reference_resolves_and_the_document_loads() -> None:
    document = openapi_document()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    for ref in refs:
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
    schema = schemathesis.openapi.from_path(openapi.DOCUMENT)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]  # an Err fails the test
    assert len(operations) == sum(len(methods) for methods in document["paths"].values())


# The bounds the models check in validators, which openapi.py states by hand: each must hold at the
# model, exactly at the number the document gives.
def _stops(n: int) -> dict[str, Any]:
    return {"prompt": "p", "stop": [f"s{i}" for i in range(n)]}


def _metadata(n: int, **body: Any) -> dict[str, Any]:
    return {**body, "metadata": {f"k{i}": "v" for i in range(n)}}


@pytest.mark.parametrize(("model", "body", "limit"), [
    (JobRequest, _stops, MAX_STOP_SEQUENCES),
    (JobRequest, lambda n: _metadata(n, prompt="p"), MAX_METADATA_PAIRS),
    (CreateBatchRequest, lambda n: _metadata(n, input_jsonl="{}"), MAX_METADATA_PAIRS),
])
def test_validator_bounds_in_the_document_hold_at_the_model(model: type[BaseModel], body: Any, limit: int) -> None:
    model.model_validate(body(limit))
    with pytest.raises(ValidationError):
        model.model_validate(body(limit + 1))


def test_nullable_fields_accept_null_as_the_document_says() -> None:
    schema = openapi_document()["components"]["schemas"]["JobRequest"]["properties"]
    nullable = [name for name, prop in schema.items() if prop.get("nullable")]
    assert "stop" in nullable and "seed" in nullable
    body = {name: None for name in nullable} | {"prompt": "p"}
    assert JobRequest.model_validate(body).prompt == "p"
