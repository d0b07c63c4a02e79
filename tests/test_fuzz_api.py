"""Schema fuzzing: schemathesis generates requests from openapi.yaml (valid and invalid) and sends
them, with a valid API key of a tenant of the run's own, to the running local stack.

Asserted on every response: no 5xx, and the response conforms to the spec (status code, content
type, headers, body schema), and data the schema forbids is rejected. Afterwards Firestore holds
exactly the jobs whose creation was answered 202: no rejected request left a document behind.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from google.cloud.firestore_v1.base_query import FieldFilter
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jobs.adapters.api_key_store import FirestoreApiKeyStore
from scripts.api_keys import create_key
from scripts.stack_client import Stack

REPO = Path(__file__).resolve().parents[1]
# Examples per operation; with every operation of the spec this makes well over 1000 requests.
EXAMPLES = int(os.environ.get("LLMQ_FUZZ_EXAMPLES", "200"))
SUBMIT_OPERATIONS = {"createJob", "cancelJob", "createBatch", "cancelBatch"}

pytestmark = [
    pytest.mark.timeout(1500),
    # schemathesis and hypothesis internals, not our code.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning"),
]


def _fuzz(operation: Any, *, base_url: str, auth: dict[str, str], responses: Counter[tuple[str, int]],
          created: set[str]) -> Callable[[], None]:
    """A hypothesis test that sends one operation's generated cases and checks every answer."""
    operation_id = operation.definition.raw.get("operationId", operation.label)

    # Deployment-specific rules (the model list, each model's max_tokens) are not in the static
    # schema, so schema-valid data may still be refused with a 400: that one check is off.
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy())
    def exercise(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=auth, timeout=90)
        responses[(operation_id, response.status_code)] += 1
        assert response.status_code < 500, f"{operation.label}: {response.status_code} {response.text[:300]}"
        if operation_id == "createJob" and response.status_code == 202:
            created.add(response.json()["id"])
        case.validate_response(response, excluded_checks=[positive_data_acceptance], headers=auth)

    return exercise


def test_fuzzed_api_never_fails_and_conforms(stack: Stack, db: Any) -> None:
    tenant = f"fuzz-{uuid.uuid4().hex[:8]}"
    key = create_key(FirestoreApiKeyStore(db), tenant=tenant, name="fuzz")
    auth = {"Authorization": f"Bearer {key}"}
    runner = stack.pid("runner")
    schema = schemathesis.openapi.from_path(REPO / "openapi.yaml")
    responses: Counter[tuple[str, int]] = Counter()
    created: set[str] = set()

    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err fails the test here, as it should
        submits = operation.definition.raw.get("operationId") in SUBMIT_OPERATIONS
        base_url = stack.info["submit_url"] if submits else stack.info["status_url"]
        _fuzz(operation, base_url=base_url, auth=auth, responses=responses, created=created)()

    total = sum(responses.values())
    summary = ", ".join(f"{op} {code}: {n}" for (op, code), n in sorted(responses.items()))
    print(f"\nfuzz: {total} requests; {summary}")
    assert total >= 1000 or "LLMQ_FUZZ_EXAMPLES" in os.environ, total
    # Only accepted submissions left documents.
    stored = {s.id for s in db.collection("jobs").where(filter=FieldFilter("tenant", "==", tenant)).stream()}
    assert stored == created
    # Every accepted job, however extreme its (valid) parameters, runs to an end without taking the
    # runner down with it: one poison job must not kill the engine every other job shares.
    with stack.http(api_key=key) as client:
        for job_id in created:
            view = stack.job(client, job_id, wait=60).json()
            code = (view["error"] or {}).get("code")
            # Designed ends besides success: a prompt too long for the model, or a (valid) deadline of a
            # second or two that passed while the job queued behind the fuzzer's hundreds of others.
            assert (view["status"] == "succeeded" or code == "context_length_exceeded"
                    or (code == "deadline_exceeded" and view["deadline_at"] is not None)), view
    assert stack.pid("runner") == runner, "the runner was restarted during the fuzz run"
