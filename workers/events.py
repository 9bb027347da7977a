"""Turn an SQS message body into work items.

One body can hold several records. What comes in:
- S3 event notifications (`{"Records": [{"eventSource": "aws:s3", "s3": {...}}]}`), the object
  key URL-encoded (`a%2Fb.jpg`, spaces as `+`), so it is decoded with `unquote_plus`;
- `s3:TestEvent`, sent once when the bucket notification is configured: acknowledged and logged;
- our own re-runs (`udagram.jobs.REPROCESS_SOURCE`), same envelope;
- anything else (not JSON, no Records, unknown records, a field of the wrong type or value such
  as a numeric key or ETag, a negative, fractional or boolean size) is garbage: the consumer moves
  it to the dead-letter queue at once with the reason, since no image can be attributed.
Keys this app did not hand out (`data.image_id_from_key` is None) are acknowledged and logged.
"""

from __future__ import annotations

import json
import re
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
    except RecursionError:  # e.g. 100000 nested brackets
        return [Garbage("body is not JSON: nested too deeply")]
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


class _BadField(ValueError):
    """A field of a record has the wrong type or value: the record is Garbage with this reason."""


# What a model version may look like: it becomes a path segment of the TorchServe URL.
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _get(container: dict[str, Any], path: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
    """`container[path]` (a dotted path) checked against `kind`; None when optional and absent.
    bool is refused where an int is wanted (JSON `true` is not a size)."""
    value: Any = container
    walked: list[str] = []
    for name in path.split("."):
        if not isinstance(value, dict):
            raise _BadField(f"{'.'.join(walked) or 'record'} is {type(value).__name__}, not an object")
        walked.append(name)
        value = value.get(name)
    if value is None:
        if required:
            raise _BadField(f"{path} is missing")
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise _BadField(f"{path} is {type(value).__name__} {_short(value)}, not {names}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_record(record: Any) -> Item:
    if not isinstance(record, dict):
        return Garbage("record is not an object")
    source = record.get("eventSource")
    try:
        if source == REPROCESS_SOURCE:
            return _parse_rerun(record)
        if source == "aws:s3":
            return _parse_s3(record)
    except _BadField as exc:
        return Garbage(f"{source} record: {exc}")
    return Garbage(f"unknown eventSource {_short(source)}")


def _parse_rerun(record: dict[str, Any]) -> Item:
    image_id = record.get("imageId")
    if not isinstance(image_id, str) or not data.is_valid_id(image_id):
        return Garbage(f"re-run record with invalid imageId {_short(image_id)}")
    version = _get(record, "modelVersion", str, required=False) or None
    if version is not None and not _VERSION_RE.fullmatch(version):
        raise _BadField(f"modelVersion {_short(version)} is not a version (letters, digits, . _ -)")
    pending_only = _get(record, "pendingOnly", bool, required=False) or False
    return ImageTask(image_id=image_id, source="reprocess", model_version=version, pending_only=pending_only)


def _parse_s3(record: dict[str, Any]) -> Item:
    name = _get(record, "eventName", str)
    bucket = _get(record, "s3.bucket.name", str)
    raw_key = _get(record, "s3.object.key", str)
    if not bucket or not raw_key:
        raise _BadField("s3.bucket.name and s3.object.key must not be empty")
    size = _get(record, "s3.object.size", int, required=False)
    if size is not None and size < 0:
        raise _BadField(f"s3.object.size is negative ({size})")
    etag = _get(record, "s3.object.eTag", str, required=False)
    if etag is None:
        etag = _get(record, "s3.object.etag", str, required=False)
    sequencer = _get(record, "s3.object.sequencer", str, required=False)
    key = unquote_plus(raw_key)
    if not name.startswith("ObjectCreated"):
        return Ignored(f"{name} on {bucket}/{key}")
    image_id = data.image_id_from_key(key)
    if image_id is None or not key.startswith("originals/"):
        return Ignored(f"key {key!r} in {bucket} is not an original of this app")
    return ImageTask(image_id=image_id, source="s3", bucket=bucket, key=key, size=size,
                     etag=normalise_etag(etag), sequencer=sequencer)
