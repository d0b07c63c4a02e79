"""Fast tier: OpenAI's Files API (the files function) and batches of uploaded files (POST /v1/batches with
input_file_id, GET /v1/batches) through the real handlers over in-memory ports (tests/memory.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from jobs.adapters import wiring
from jobs.auth import ApiKey, hash_key, new_key
from jobs.settings import api_settings
from tests.memory import (
    InMemoryApiKeyStore,
    InMemoryBatchStore,
    InMemoryContents,
    InMemoryFileStore,
    InMemoryLauncher,
    api_ports,
)

REPO = Path(__file__).resolve().parents[1]
BUCKET = "llmq-batch"
LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}\n'
MAX_UPLOAD = 64 * 1024


def _app(name: str) -> Any:
    return functions_framework.create_app(target=name, source=str(REPO / "functions" / name / "main.py")).test_client()


class Api:
    def __init__(self) -> None:
        self.files, self.contents, self.keys = InMemoryFileStore(), InMemoryContents(), InMemoryApiKeyStore()
        self.batches, self.launcher = InMemoryBatchStore(), InMemoryLauncher()
        self.auth = {tenant: self._key(tenant) for tenant in ("acme", "other")}
        wiring.use_ports(api_ports(files=self.files, file_contents=self.contents, api_keys=self.keys,
                                   batches=self.batches, batch_launcher=self.launcher))
        self.file_fn, self.submit, self.status = _app("files"), _app("submit"), _app("status")

    def _key(self, tenant: str) -> dict[str, str]:
        key = new_key()
        self.keys.create(ApiKey(key_hash=hash_key(key), tenant=tenant, name="t", created_at=datetime.now(UTC)))
        return {"Authorization": f"Bearer {key}"}

    def upload(self, data: bytes = LINE, *, tenant: str = "acme", name: str = "in.jsonl",
               form: dict[str, str | None] | None = None) -> Any:
        fields: dict[str, Any] = {"purpose": "batch", **(form or {}), "file": (io.BytesIO(data), name)}
        return self.file_fn.post("/v1/files", data={k: v for k, v in fields.items() if v is not None},
                                 headers=self.auth[tenant], content_type="multipart/form-data")


@pytest.fixture()
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("LLMQ_BATCH_BUCKET", BUCKET)
    monkeypatch.setenv("LLMQ_MAX_UPLOAD_BYTES", str(MAX_UPLOAD))
    api_settings.cache_clear()
    files_api = Api()
    try:
        yield files_api
    finally:
        wiring.use_ports(None)
        monkeypatch.undo()
        api_settings.cache_clear()


def test_an_upload_is_openais_file_object_and_its_content_comes_back(api: Api) -> None:
    before = datetime.now(UTC)
    response = api.upload(LINE * 3)
    assert response.status_code == 200, response.text
    file = response.get_json()
    assert file["object"] == "file" and file["id"].startswith("file-") and file["bytes"] == len(LINE) * 3
    assert file["filename"] == "in.jsonl" and file["purpose"] == "batch" and file["status"] == "processed"
    assert file["created_at"] >= int(before.timestamp())
    assert file["expires_at"] == file["created_at"] + 30 * 86400  # the default, as OpenAI's batch files
    assert api.contents.objects == {f"gs://{BUCKET}/files/{file['id']}": LINE * 3}
    content = api.file_fn.get(f"/v1/files/{file['id']}/content", headers=api.auth["acme"])
    assert content.status_code == 200 and content.data == LINE * 3
    assert content.headers["Content-Length"] == str(len(LINE) * 3)
    got = api.file_fn.get(f"/v1/files/{file['id']}", headers=api.auth["acme"])
    assert got.status_code == 200 and got.get_json() == file


def test_another_tenants_file_does_not_exist_for_the_caller(api: Api) -> None:
    file_id = api.upload().get_json()["id"]
    for method, path in (("GET", f"/v1/files/{file_id}"), ("GET", f"/v1/files/{file_id}/content"),
                         ("DELETE", f"/v1/files/{file_id}")):
        response = api.file_fn.open(path, method=method, headers=api.auth["other"])
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "file_not_found", path
    assert api.file_fn.get("/v1/files", headers=api.auth["other"]).get_json()["data"] == []
    assert file_id in api.files.records


def test_delete_removes_the_record_and_the_bytes(api: Api) -> None:
    file_id = api.upload().get_json()["id"]
    deleted = api.file_fn.delete(f"/v1/files/{file_id}", headers=api.auth["acme"])
    assert deleted.status_code == 200 and deleted.get_json() == {"id": file_id, "object": "file", "deleted": True}
    assert api.files.records == {} and api.contents.objects == {}
    assert api.file_fn.get(f"/v1/files/{file_id}", headers=api.auth["acme"]).status_code == 404


@pytest.mark.parametrize(("form", "field", "code"), [
    ({"purpose": None}, "purpose", "required"),
    ({"purpose": "fine-tune"}, "purpose", "unsupported_value"),
    ({"purpose": "batch_output"}, "purpose", "unsupported_value"),
    ({"expires_after[anchor]": "created_at"}, "expires_after", "required"),
    ({"expires_after[anchor]": "now", "expires_after[seconds]": "3600"}, "expires_after[anchor]", "unsupported_value"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after[seconds]", "out_of_range"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "x"}, "expires_after[seconds]", "out_of_range"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600²"}, "expires_after[seconds]",
     "out_of_range"),
    ({"colour": "blue"}, "colour", "unsupported_parameter"),
])
def test_a_bad_form_is_a_400_naming_the_field_and_leaves_nothing(api: Api, form: dict[str, str | None], field: str,
                                                                  code: str) -> None:
    response = api.upload(form=form)
    assert response.status_code == 400, response.text
    error = response.get_json()["error"]
    assert error["param"] == field and error["details"][0]["code"] == code
    assert api.files.records == {} and api.contents.objects == {}


def test_a_file_over_the_limit_is_a_413_and_leaves_nothing(api: Api) -> None:
    response = api.upload(b"x" * (MAX_UPLOAD + 1))
    assert response.status_code == 413
    assert api.files.records == {} and api.contents.objects == {}


def test_an_upload_must_be_multipart_with_one_file_part(api: Api) -> None:
    as_json = api.file_fn.post("/v1/files", json={"purpose": "batch"}, headers=api.auth["acme"])
    assert as_json.status_code == 415
    no_file = api.file_fn.post("/v1/files", data={"purpose": "batch"}, headers=api.auth["acme"],
                               content_type="multipart/form-data")
    assert no_file.status_code == 400 and no_file.get_json()["error"]["param"] == "file"
    two = api.file_fn.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(LINE), "a.jsonl"),
                                              "other": (io.BytesIO(LINE), "b.jsonl")},
                           headers=api.auth["acme"], content_type="multipart/form-data")
    assert two.status_code == 400
    assert api.files.records == {} and api.contents.objects == {}
    unauthenticated = api.upload(tenant="acme")
    assert unauthenticated.status_code == 200  # (the control: the same upload with a key works)
    assert api.file_fn.post("/v1/files", data={"purpose": "batch"}).status_code == 401


def test_a_shorter_expiry_is_kept_and_an_expired_file_is_gone_at_once(api: Api) -> None:
    shorter: dict[str, str | None] = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    file = api.upload(form=shorter).get_json()
    assert file["expires_at"] == file["created_at"] + 3600
    uri = f"gs://{BUCKET}/files/{file['id']}"
    assert api.contents.expiry[uri] == api.files.records[file["id"]].expire_at  # the bucket's rule deletes it then
    record = api.files.records[file["id"]]
    api.files.records[file["id"]] = record.model_copy(update={"expire_at": datetime.now(UTC) - timedelta(seconds=1)})
    assert api.file_fn.get(f"/v1/files/{file['id']}", headers=api.auth["acme"]).status_code == 404
    assert api.file_fn.get("/v1/files", headers=api.auth["acme"]).get_json()["data"] == []


def test_files_are_listed_a_page_at_a_time_in_either_order(api: Api) -> None:
    ids = [api.upload(name=f"{i}.jsonl").get_json()["id"] for i in range(5)]
    for i, file_id in enumerate(ids):  # distinct creation times, oldest first
        record = api.files.records[file_id]
        api.files.records[file_id] = record.model_copy(update={"created_at": record.created_at + timedelta(seconds=i)})

    def page(**params: Any) -> Any:
        response = api.file_fn.get("/v1/files", query_string=params, headers=api.auth["acme"])
        assert response.status_code == 200, response.text
        return response.get_json()

    first = page(limit=2)
    assert [f["id"] for f in first["data"]] == ids[:-3:-1] and first["has_more"] is True
    assert first["object"] == "list" and first["first_id"] == ids[4] and first["last_id"] == ids[3]
    rest = page(limit=10, after=first["last_id"])
    assert [f["id"] for f in rest["data"]] == ids[2::-1] and rest["has_more"] is False
    assert [f["id"] for f in page(order="asc", limit=3)["data"]] == ids[:3]
    assert page(purpose="batch_output")["data"] == []
    for bad in ({"limit": 0}, {"limit": "x"}, {"limit": "²"}, {"order": "up"}, {"after": "file-unknown"}):
        assert api.file_fn.get("/v1/files", query_string=bad, headers=api.auth["acme"]).status_code == 400, bad


def test_a_batch_of_an_uploaded_file_reads_that_file(api: Api) -> None:
    file_id = api.upload().get_json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h",
            "metadata": {"job": "nightly-eval"}}
    response = api.submit.post("/v1/batches", json=body, headers=api.auth["acme"])
    assert response.status_code == 202, response.text
    batch = response.get_json()
    assert batch["input_file_id"] == file_id and batch["endpoint"] == "/v1/completions"
    assert batch["completion_window"] == "24h" and batch["expires_at"] == batch["created_at"] + 86400
    assert batch["status"] == "validating" and batch["metadata"] == {"job": "nightly-eval"}
    assert api.launcher.launched[0]["input_uri"] == f"gs://{BUCKET}/files/{file_id}"


@pytest.mark.parametrize(("change", "field"), [
    ({"endpoint": None}, "endpoint"),
    ({"endpoint": "/v1/embeddings"}, "endpoint"),
    ({"input_file_id": "file-nothere"}, "input_file_id"),
    ({"completion_window": "1w"}, "completion_window"),
    ({"input_jsonl": LINE.decode()}, None),  # two inputs
])
def test_a_bad_batch_of_a_file_is_a_400_and_creates_nothing(api: Api, change: dict[str, Any], field: str | None) -> None:
    file_id = api.upload().get_json()["id"]
    body = {k: v for k, v in {"input_file_id": file_id, "endpoint": "/v1/completions", **change}.items()
            if v is not None}
    response = api.submit.post("/v1/batches", json=body, headers=api.auth["acme"])
    assert response.status_code == 400, response.text
    if field is not None:
        assert response.get_json()["error"]["param"] == field
    assert api.batches.records == {} and api.launcher.launched == []


def test_another_tenants_file_and_the_files_prefix_are_not_a_batch_input(api: Api) -> None:
    file_id = api.upload(tenant="other").get_json()["id"]
    theirs = api.submit.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions"},
                             headers=api.auth["acme"])
    assert theirs.status_code == 400 and theirs.get_json()["error"]["code"] == "file_not_found"
    by_uri = api.submit.post("/v1/batches", json={"input_uri": f"gs://{BUCKET}/files/{file_id}"},
                             headers=api.auth["acme"])
    assert by_uri.status_code == 400 and by_uri.get_json()["error"]["param"] == "input_uri"
    assert api.batches.records == {}


def test_batches_are_listed_newest_first_a_page_at_a_time(api: Api) -> None:
    ids = []
    for i in range(3):
        response = api.submit.post("/v1/batches", json={"input_jsonl": LINE.decode()}, headers=api.auth["acme"])
        ids.append(response.get_json()["id"])
        record = api.batches.records[ids[-1]]
        api.batches.records[ids[-1]] = record.model_copy(update={"created_at": record.created_at + timedelta(seconds=i)})
    api.submit.post("/v1/batches", json={"input_jsonl": LINE.decode()}, headers=api.auth["other"])
    first = api.status.get("/v1/batches?limit=2", headers=api.auth["acme"]).get_json()
    assert [b["id"] for b in first["data"]] == [ids[2], ids[1]] and first["has_more"] is True
    assert first["first_id"] == ids[2] and first["last_id"] == ids[1]
    rest = api.status.get(f"/v1/batches?after={first['last_id']}", headers=api.auth["acme"]).get_json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False
    for bad in ("limit=101", "limit=0", "after=batch_unknown"):
        assert api.status.get(f"/v1/batches?{bad}", headers=api.auth["acme"]).status_code == 400, bad


def test_a_form_part_without_a_name_is_a_400(api: Api) -> None:
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n"
            f"{LINE.decode()}\r\n--{boundary}--\r\n").encode()
    response = api.file_fn.post("/v1/files", data=body, headers=api.auth["acme"],
                                content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_multipart"
    assert api.files.records == {} and api.contents.objects == {}
