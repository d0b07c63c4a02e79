"""Google's wrapped Pub/Sub push envelope, and the job message inside it."""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.models import JobMessage


class PushedMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    data: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)
    message_id: str = Field(default="", alias="messageId")
    publish_time: str | None = Field(default=None, alias="publishTime")


class PushEnvelope(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    message: PushedMessage
    subscription: str = ""
    # Present only with a dead-letter policy (and never from the local emulator).
    delivery_attempt: int | None = Field(default=None, alias="deliveryAttempt")


class UnreadableMessage(Exception):
    """The message cannot be decoded into a job. `job_id` is set when the attributes name one."""

    def __init__(self, reason: str, job_id: str | None) -> None:
        super().__init__(reason)
        self.job_id = job_id


def decode_job_message(envelope: PushEnvelope) -> JobMessage:
    try:
        raw = base64.b64decode(envelope.message.data, validate=True)
        return JobMessage.model_validate_json(raw)
    except (binascii.Error, ValueError, ValidationError) as err:
        raise UnreadableMessage(f"undecodable job message: {type(err).__name__}",
                                envelope.message.attributes.get("job_id")) from err
