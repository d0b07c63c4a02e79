"""The dead-letter function: the push endpoint of the dead-letter topic's subscription.

It runs on a CPU function, never on the GPU runner: a dead letter must not cold-start a GPU.
Answers 2xx once the job's document says `failed`/`dead_lettered` (or needs nothing), 503 when
Firestore is unavailable (Pub/Sub redelivers the dead letter)."""

from __future__ import annotations

import flask
import functions_framework
from pydantic import ValidationError

from jobs.adapters.http import error_response, json_response
from jobs.adapters.wiring import announcer, job_store, traced
from jobs.deadletters import handle_dead_letter
from jobs.errors import DependencyUnavailable
from jobs.logs import configure_logging
from jobs.push import PushEnvelope
from jobs.service import utcnow

configure_logging()  # structured JSON logs from the first request on


@functions_framework.http
def deadletter(request: flask.Request) -> flask.Response:
    try:
        envelope = PushEnvelope.model_validate_json(request.get_data())
    except ValidationError:
        # Nothing to mark, and no queue behind this one: acknowledge rather than loop forever.
        return json_response({"outcome": "not a push envelope"}, 200)
    traced()
    try:
        outcome = handle_dead_letter(job_store(), envelope, now=utcnow(), announcer=announcer())
    except DependencyUnavailable as err:
        return error_response(err)
    return json_response({"outcome": outcome})
