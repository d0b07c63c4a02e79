"""One base URL (CONTRACT §8): the routing table read from openapi.yaml, the API Gateway config generated
from it, and the local front door serving every route on one port (the stack's `api_url`)."""

from __future__ import annotations

import httpx
import pytest

from jobs.adapters.http import openapi_document
from jobs.routes import FUNCTION_KEY, RoutingTable, check_document, gateway_document
from scripts.stack_client import Stack


def test_every_operation_of_the_api_document_names_the_function_that_serves_it() -> None:
    document = openapi_document()
    check_document(document)  # raises naming any operation without x-llmq-function
    assert {"submit", "status"} <= RoutingTable.from_document(document).functions()


def test_the_routing_table_matches_templates_methods_and_trailing_slashes() -> None:
    table = RoutingTable.from_document(openapi_document())
    assert table.match("POST", "/v1/jobs").function == "submit"  # type: ignore[union-attr]
    assert table.match("GET", "/v1/jobs/job_abc/").function == "status"  # type: ignore[union-attr]
    assert table.match("POST", "/v1/jobs/job_abc/cancel").function == "submit"  # type: ignore[union-attr]
    assert table.match("HEAD", "/v1/models").function == "status"  # type: ignore[union-attr]
    wrong_method = table.match("DELETE", "/v1/jobs")
    assert wrong_method is not None and wrong_method.function is None and "POST" in wrong_method.allowed
    assert table.match("GET", "/v1/jobs/a/b/c") is None
    assert table.match("GET", "/v2/jobs") is None


def test_an_operation_without_its_function_is_refused_by_name() -> None:
    document = {"paths": {"/v1/x": {"get": {"operationId": "x"}, "post": {FUNCTION_KEY: "submit"}}}}
    with pytest.raises(ValueError, match="GET /v1/x"):
        check_document(document)


def test_the_gateway_config_routes_each_operation_to_its_function_and_leaves_auth_to_the_functions() -> None:
    document = openapi_document()
    table = RoutingTable.from_document(document)
    addresses = {name: f"https://{name}-abc.a.run.app" for name in table.functions()}
    config = gateway_document(document, addresses, deadlines={"status": 120.0}, title="llmq-prod")
    assert "security" not in config and "securitySchemes" not in config.get("components", {})
    assert config["info"]["title"] == "llmq-prod"
    get_job = config["paths"]["/v1/jobs/{id}"]["get"]
    assert FUNCTION_KEY not in get_job
    assert get_job["x-google-backend"] == {"address": addresses["status"], "path_translation": "APPEND_PATH_TO_ADDRESS",
                                           "deadline": 120.0, "disable_auth": True}
    assert config["paths"]["/v1/jobs"]["post"]["x-google-backend"]["address"] == addresses["submit"]
    assert FUNCTION_KEY in document["paths"]["/v1/jobs"]["post"], "the source document is left as it was"


def test_the_front_door_serves_every_route_on_one_port(stack: Stack) -> None:
    api = stack.info["api_url"]
    headers = {"Authorization": f"Bearer {stack.info['api_key']}"}
    with httpx.Client(base_url=api, headers=headers, timeout=60) as client:
        created = client.post("/v1/jobs", json={"prompt": "one url", "max_tokens": 4})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert created.headers["Location"] == f"/v1/jobs/{job_id}"
        done = client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
        assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text
        assert client.get("/v1/models").json()["object"] == "list"
        assert client.get("/openapi.json", headers={"Authorization": ""}).json()["openapi"].startswith("3.")
        # The functions' own answers pass through unchanged, errors included.
        unauthenticated = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer llmq_nope"})
        assert unauthenticated.status_code == 401 and unauthenticated.headers["WWW-Authenticate"]
        # Routes the document does not have are answered by the front door itself, in the API's error shape.
        missing = client.get("/v1/nowhere")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        wrong = client.delete("/v1/jobs")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
