"""The worker's queues on the moto server: counts, the dead-letter queue, and messages sent by hand."""

from __future__ import annotations

import json

from udagram.aws import client
from udagram.settings import Settings


def queue_counts(settings: Settings, name: str | None = None) -> tuple[int, int, int]:
    """(visible, in flight, delayed) of the uploads queue (or `name`)."""
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=name or settings.queue_name)["QueueUrl"]
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return (int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"]),
            int(a.get("ApproximateNumberOfMessagesDelayed", 0)))


def queue_empty(settings: Settings, name: str | None = None) -> bool:
    return queue_counts(settings, name) == (0, 0, 0)


def dlq_messages(settings: Settings) -> list[dict]:
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=settings.dead_letter_queue_name)["QueueUrl"]
    out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                              MessageAttributeNames=["All"], VisibilityTimeout=0)
    return out.get("Messages", [])


def dlq_reasons(settings: Settings) -> list[str]:
    return [m["MessageAttributes"]["reason"]["StringValue"] for m in dlq_messages(settings)]


def send_body(settings: Settings, body: str | dict) -> None:
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=body if isinstance(body, str) else json.dumps(body))


def s3_event_body(settings: Settings, key: str, etag: str, size: int = 1, bucket: str | None = None) -> str:
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket or settings.originals_bucket},
               "object": {"key": key, "size": size, "eTag": etag, "sequencer": "00"}},
    }]})
