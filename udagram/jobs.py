"""Messages the app itself puts on the uploads queue, beside S3's own event notifications.

A re-run is sent as an S3-notification-shaped body with our own event source, so the worker
parses one message shape: `{"Records": [{"eventSource": "udagram:reprocess", ...}]}`.

Bulk re-runs (`udagram reprocess`, the admin's jobs) are paced by `reprocess_room`: new uploads
wait behind at most `reprocess_max_outstanding` re-runs however many images are re-run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from udagram.aws import client
from udagram.settings import Settings, get_settings

REPROCESS_SOURCE = "udagram:reprocess"


def reprocess_record(image_id: str, model_version: str | None = None, pending_only: bool = False) -> dict[str, Any]:
    """`pending_only`: process only if the image is still AWAITING_UPLOAD or PROCESSING (the
    worker's start-up reconciliation), so an image finished meanwhile is not redone."""
    record: dict[str, Any] = {"eventSource": REPROCESS_SOURCE, "imageId": image_id, "modelVersion": model_version}
    if pending_only:
        record["pendingOnly"] = True
    return record


def queue_url(settings: Settings | None = None, sqs: Any = None) -> str:
    settings = settings or get_settings()
    sqs = sqs or client("sqs", settings)
    return sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]


def enqueue_reprocess(
    image_ids: Iterable[str],
    model_version: str | None = None,
    settings: Settings | None = None,
    sqs: Any = None,
    pending_only: bool = False,
) -> int:
    """Queue re-runs of the given images (in SQS batches of 10); returns how many were sent."""
    settings = settings or get_settings()
    sqs = sqs or client("sqs", settings)
    url = queue_url(settings, sqs)
    sent = 0
    batch: list[dict[str, str]] = []

    def flush() -> None:
        nonlocal sent
        if not batch:
            return
        result = sqs.send_message_batch(QueueUrl=url, Entries=list(batch))
        if result.get("Failed"):
            raise RuntimeError(f"SQS refused {len(result['Failed'])} re-run messages: {result['Failed']}")
        sent += len(batch)
        batch.clear()

    for image_id in image_ids:
        body = json.dumps({"Records": [reprocess_record(image_id, model_version, pending_only)]})
        batch.append({"Id": str(len(batch)), "MessageBody": body})
        if len(batch) == 10:
            flush()
    flush()
    return sent


def queue_depth(sqs: Any, url: str) -> int:
    """Messages waiting in the queue (visible ones: not those a worker is on)."""
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attrs.get("ApproximateNumberOfMessages", "0"))


def reprocess_room(sqs: Any, url: str, limit: int) -> int:
    """How many re-runs a bulk feeder may add now: the queue is kept below `limit` waiting messages."""
    return max(0, limit - queue_depth(sqs, url))
