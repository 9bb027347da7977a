"""Turn an SQS message body into work items.

One body can hold several records. What comes in:
- S3 event notifications (`{"Records": [{"eventSource": "aws:s3", "s3": {...}}]}`), the object
  key URL-encoded (`a%2Fb.jpg`, spaces as `+`), so it is decoded with `unquote_plus`;
- `s3:TestEvent`, sent once when the bucket notification is configured: acknowledged and logged;
- our own re-runs (`udagram.jobs.REPROCESS_SOURCE`), same envelope;
- anything else (not JSON, no Records, unknown records) is garbage: the consumer moves it to the
  dead-letter queue with the reason, since no image can be attributed.
Keys this app did not hand out (`data.image_id_from_key` is None) are acknowledged and logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from udagram import data
from udagram.jobs import REPROCESS_SOURCE


@dataclass(frozen=True)
class ImageTask:
    """One image to (re)process."""

    image_id: str
    source: str  # "s3" or "reprocess"
    bucket: str | None = None
    key: str | None = None
    size: int | None = None
    etag: str | None = None  # without quotes
    sequencer: str | None = None
    model_version: str | None = None  # re-run with this TorchServe version
    pending_only: bool = False  # reconciliation: only if still AWAITING_UPLOAD / PROCESSING


@dataclass(frozen=True)
class Ignored:
    """A record acknowledged without work (test event, foreign key, deletion...)."""

    reason: str


@dataclass(frozen=True)
class Garbage:
    """A body or record nothing can be made of: goes to the dead-letter queue."""

    reason: str


Item = ImageTask | Ignored | Garbage


def normalise_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


def parse_body(body: str) -> list[Item]:
    """The work items of one SQS message body (never raises)."""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError) as exc:
        return [Garbage(f"body is not JSON: {exc}")]
    if not isinstance(doc, dict):
        return [Garbage("body is not a JSON object")]
    if doc.get("Event") == "s3:TestEvent":
        return [Ignored(f"s3:TestEvent for bucket {doc.get('Bucket')}")]
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        # SNS-wrapped S3 events (S3 -> SNS -> SQS) carry the event in "Message".
        if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
            return parse_body(doc["Message"])
        return [Garbage("no Records in body")]
    return [parse_record(r) for r in records]


def parse_record(record: Any) -> Item:
    if not isinstance(record, dict):
        return Garbage("record is not an object")
    source = record.get("eventSource")
    if source == REPROCESS_SOURCE:
        image_id = record.get("imageId")
        if not isinstance(image_id, str) or not data.is_valid_id(image_id):
            return Garbage(f"re-run record with invalid imageId {image_id!r}")
        version = record.get("modelVersion")
        return ImageTask(image_id=image_id, source="reprocess", model_version=version or None,
                         pending_only=bool(record.get("pendingOnly")))
    if source == "aws:s3":
        return _parse_s3(record)
    return Garbage(f"unknown eventSource {source!r}")


def _parse_s3(record: dict[str, Any]) -> Item:
    name = str(record.get("eventName", ""))
    try:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError):
        return Garbage("S3 record without s3.bucket.name / s3.object.key")
    if not name.startswith("ObjectCreated"):
        return Ignored(f"{name} on {bucket}/{key}")
    image_id = data.image_id_from_key(key)
    if image_id is None or not key.startswith("originals/"):
        return Ignored(f"key {key!r} in {bucket} is not an original of this app")
    size = obj.get("size")
    return ImageTask(
        image_id=image_id,
        source="s3",
        bucket=bucket,
        key=key,
        size=int(size) if isinstance(size, (int, float, str)) and str(size).isdigit() else None,
        etag=normalise_etag(obj.get("eTag") or obj.get("etag")),
        sequencer=obj.get("sequencer"),
    )
