"""`python -m scripts.bench_tracing MODE`: what tracing adds to one submission, in process: JobService.submit over
the in-memory ports (tests/memory.py), 5,000 times after 500 warm-up submissions, with tracing `unconfigured`
(no tracer provider), `none` (spans made, nothing exported) or `file` (exported through the batch span
processor to a temporary folder, as the local stack does). Prints microseconds per submission."""

from __future__ import annotations

import sys
import tempfile
import time

from jobs import tracing
from jobs.catalog import ModelCatalog, ModelSpec
from jobs.models import JobRequest
from jobs.quotas import Quota
from jobs.service import JobService
from tests.memory import InMemoryJobStore, InMemoryPublisher


def main() -> None:
    mode = sys.argv[1]
    if mode != "unconfigured":
        tracing.configure_tracing("bench", exporter=mode, directory=tempfile.mkdtemp())  # type: ignore[arg-type]
    service = JobService(store=InMemoryJobStore(), publisher=InMemoryPublisher(),
                         catalog=ModelCatalog([ModelSpec(id="tiny-llama")]), quota=Quota(submissions_per_minute=0,
                                                                                          queued_jobs=0))
    request = JobRequest.model_validate({"prompt": "one two three", "max_tokens": 4})
    for _ in range(500):
        service.submit(request, tenant="t", idempotency_key=None)
    n = 5000
    started = time.perf_counter()
    for _ in range(n):
        service.submit(request, tenant="t", idempotency_key=None)
    print(f"{mode}: {(time.perf_counter() - started) / n * 1e6:.1f} us per submit")


if __name__ == "__main__":
    main()
