"""ResultStore over Cloud Storage: one object per job at a deterministic name."""

from __future__ import annotations

import json
from typing import Any

from google.cloud import storage  # type: ignore[attr-defined]  # no py.typed

from jobs.adapters.google_errors import CLIENT_ERRORS
from jobs.errors import DependencyUnavailable


def result_object_name(job_id: str) -> str:
    return f"results/{job_id}.json"


class GcsResultStore:
    def __init__(self, client: storage.Client, *, bucket: str) -> None:
        self._bucket = client.bucket(bucket)

    def write_result(self, job_id: str, body: dict[str, Any]) -> str:
        name = result_object_name(job_id)
        try:
            self._bucket.blob(name).upload_from_string(
                json.dumps(body, ensure_ascii=False), content_type="application/json"
            )
        except CLIENT_ERRORS as err:
            raise DependencyUnavailable("the result store is unavailable") from err
        return f"gs://{self._bucket.name}/{name}"
