"""The webhooks function: the push endpoint of the deliveries topic (`POST /`: deliver one event to one
endpoint) and of its dead-letter topic (`POST /given-up`: record that Pub/Sub gave up). A CPU function, private
(only the push identities may invoke it). Its answers are the ack protocol: 2xx delivered or nothing more to do,
503 to be redelivered after the subscription's backoff (a receiver that did not answer 2xx, or Firestore down)."""

from __future__ import annotations

import base64
import binascii

import flask
import functions_framework
from pydantic import ValidationError

from jobs.adapters.http import error_response, json_response
from jobs.adapters.wiring import deliverer
from jobs.delivery import Outcome
from jobs.errors import DependencyUnavailable
from jobs.logs import configure_logging
from jobs.push import PushEnvelope
from jobs.webhooks import DeliveryMessage

configure_logging()  # structured JSON logs from the first request on


@functions_framework.http
def webhooks(request: flask.Request) -> flask.Response:
    try:
        envelope = PushEnvelope.model_validate_json(request.get_data())
        message = DeliveryMessage.model_validate_json(base64.b64decode(envelope.message.data, validate=True))
    except (ValidationError, binascii.Error, ValueError):
        # Nothing can ever be sent for it: acknowledge rather than loop until the dead-letter topic.
        return json_response({"outcome": "not a delivery message"}, 200)
    try:
        if request.path.rstrip("/") == "/given-up":
            deliverer().give_up(message)
            return json_response({"outcome": "given_up"})
        outcome = deliverer().deliver(message)
    except DependencyUnavailable as err:
        return error_response(err)
    if outcome is Outcome.RETRY:
        return json_response({"outcome": outcome.value}, 503, {"Retry-After": "1"})
    return json_response({"outcome": outcome.value})
