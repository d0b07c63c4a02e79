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
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from google.cloud.firestore_v1.base_query import FieldFilter
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jobs.adapters.api_key_store import FirestoreApiKeyStore
from scripts.api_keys import create_key
from scripts.stack_client import Stack

REPO = Path(__file__).resolve().parents[1]
# Examples per operation; with every operation of the spec this makes well over 1000 requests.
EXAMPLES = int(os.environ.get("LLMQ_FUZZ_EXAMPLES", "200"))

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
        # Chat and completions run their requests as jobs, named by a header (schemathesis lists its values).
        created.update(response.headers.get("llmq-job-id") or [])
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
        # Each operation at its own function's URL (openapi.yaml's routing table).
        base_url = stack.info[f"{operation.definition.raw['x-llmq-function']}_url"]
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


# --- Hostile names, by class: user-controlled strings that become Firestore field names or document paths
# (metadata keys; job and batch ids in paths; idempotency keys, hashed into ids; batch input object names).
# Schema-driven generation rarely hits these (Firestore's rules are not in the schema), so they get their own
# strategies; every answer must be a designed 4xx or success, and nothing refused may be written.

_RESERVED_FIELD = st.from_regex(r"\A__[A-Za-z0-9_-]{0,16}__\Z")
_DOCUMENT_ID = st.one_of(
    st.sampled_from(["__x__", "__name__", "job_" + "0" * 32, "batch_" + "0" * 32, "file-" + "0" * 32, "we_" + "0" * 32,
                     "we_a/b", "a" * 1600,
                     "%", "\\"]),
    _RESERVED_FIELD,
    st.text(min_size=1, max_size=200),
).filter(lambda raw: raw not in (".", ".."))  # the client resolves them out of the path before it is sent
_OBJECT_NAME = st.one_of(
    st.sampled_from(["..", ".", "a\nb", "a\rb", "x" * 1100, ".well-known/acme-challenge/x", "inbox/x", "#"]),
    st.text(min_size=1, max_size=300),
)


def test_hostile_names_are_refused_with_a_4xx_and_write_nothing(stack: Stack, db: Any) -> None:
    tenant = f"hostile-{uuid.uuid4().hex[:8]}"
    key = create_key(FirestoreApiKeyStore(db), tenant=tenant, name="hostile")
    answers: Counter[tuple[str, int]] = Counter()
    accepted: set[str] = set()

    with stack.http(api_key=key) as client:
        submit, status, files = stack.info["submit_url"], stack.info["status_url"], stack.info["files_url"]

        def record(kind: str, response: httpx.Response, allowed: set[int]) -> None:
            answers[(kind, response.status_code)] += 1
            assert response.status_code in allowed, f"{kind}: {response.status_code} {response.text[:300]}"

        @settings(max_examples=EXAMPLES // 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(name=_RESERVED_FIELD, batch=st.booleans())
        def metadata_keys(name: str, batch: bool) -> None:
            if batch:
                body: dict[str, Any] = {"input_jsonl": '{"custom_id": "a", "method": "POST", "url": '
                                                       '"/v1/completions", "body": {"prompt": "x"}}',
                                        "metadata": {name: "v"}}
                response = client.post(f"{submit}/v1/batches", json=body)
            else:
                response = client.post(f"{submit}/v1/jobs", json={"prompt": "x", "metadata": {name: "v"}})
            record("metadata key", response, {400})
            assert response.json()["error"]["details"][0]["code"] == "reserved_key"

        @settings(max_examples=EXAMPLES // 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(raw=_DOCUMENT_ID)
        def document_ids(raw: str) -> None:
            segment = quote(raw, safe="")
            for method, url in (("GET", f"{status}/v1/jobs/{segment}"), ("POST", f"{submit}/v1/jobs/{segment}/cancel"),
                                ("GET", f"{status}/v1/batches/{segment}"),
                                ("POST", f"{submit}/v1/batches/{segment}/cancel"),
                                ("GET", f"{files}/v1/files/{segment}"), ("GET", f"{files}/v1/files/{segment}/content"),
                                ("DELETE", f"{files}/v1/files/{segment}"),
                                ("GET", f"{status}/v1/webhook_endpoints/{segment}"),
                                ("DELETE", f"{submit}/v1/webhook_endpoints/{segment}"),
                                ("POST", f"{submit}/v1/webhook_endpoints/{segment}/rotate_secret")):
                record("document id", client.request(method, url), {404})
            body = {"input_file_id": raw, "endpoint": "/v1/completions"}
            record("input file id", client.post(f"{submit}/v1/batches", json=body), {400})

        @settings(max_examples=EXAMPLES // 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(raw=st.one_of(_DOCUMENT_ID, st.text(min_size=1, max_size=300)))
        def idempotency_keys(raw: str) -> None:
            body = {"prompt": "x", "max_tokens": 1, "idempotency_key": raw}
            response = client.post(f"{submit}/v1/jobs", json=body)
            record("idempotency key", response, {200, 202, 400})
            if response.status_code in (200, 202):
                accepted.add(response.json()["id"])

        @settings(max_examples=EXAMPLES // 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(name=_OBJECT_NAME)
        def input_objects(name: str) -> None:
            response = client.post(f"{submit}/v1/batches", json={"input_uri": f"gs://{stack.info['batch_bucket']}/{name}"})
            record("batch input object", response, {400})

        for check in (metadata_keys, document_ids, idempotency_keys, input_objects):
            check()

    print(f"\nhostile names: {sorted(answers.items())}")
    stored = {s.id for s in db.collection("jobs").where(filter=FieldFilter("tenant", "==", tenant)).stream()}
    assert stored == accepted
    batches = list(db.collection("batches").where(filter=FieldFilter("tenant", "==", tenant)).stream())
    assert batches == []
