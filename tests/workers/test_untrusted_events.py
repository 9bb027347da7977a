"""Messages on the uploads queue are not trusted: an event that does not name the record's own
original changes nothing, fields of the wrong type go to the DLQ at once with the reason, and an
upload that arrives after its image was deleted does not stay in the bucket."""

from __future__ import annotations

import json

import pytest

from tests.workers.images import jpeg
from tests.workers.queues import dlq_messages, queue_counts, queue_empty, s3_event_body, send_body
from tests.workers.uploads import create_image, new_upload, original_exists, processed_keys, upload
from tests.workers.waiting import record, wait_for, wait_settled
from udagram import data, image_records
from udagram.aws import client
from workers import metrics

pytestmark = [pytest.mark.torchserve, pytest.mark.aws]

RECORD_FIELDS = ("status", "status_changed_at", "title", "error", "processed_key", "model_version",
                 "processed_at", "source_etag", "attempts", "lease_owner", "original_key")


def snapshot(image_id: str) -> dict:
    rec = record(image_id)
    values = {name: getattr(rec, name) for name in RECORD_FIELDS}
    values["predictions"] = [(p.label, p.probability) for p in rec.predictions or []]
    return values


def test_forged_events_change_nothing_on_a_done_image(settings, start_worker):
    """Events naming another key of the same id, or the record's key in another bucket, are
    acknowledged and logged; the record is not touched (not even marked PROCESSING)."""
    image_id = new_upload(settings, jpeg("chelsea"))
    start_worker(settings)
    [done] = wait_settled([image_id])
    assert done.status == "DONE", done.error
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    before = snapshot(image_id)
    ignored_before = metrics.SKIPPED.labels("not_the_original")._value.get()
    s3 = client("s3", settings)
    # A real object at another key of the same id: the bucket's own notification announces it.
    s3.put_object(Bucket=settings.originals_bucket, Key=f"originals/{image_id}.png", Body=b"not an image")
    # Forged: a key of the same id that does not exist.
    send_body(settings, s3_event_body(settings, f"originals/{image_id}.webp", "0" * 32))
    # Forged: the record's own key, but in another bucket, holding another picture.
    s3.put_object(Bucket=settings.processed_bucket, Key=done.original_key, Body=jpeg("coffee"))
    etag = s3.head_object(Bucket=settings.processed_bucket, Key=done.original_key)["ETag"].strip('"')
    send_body(settings, s3_event_body(settings, done.original_key, etag, bucket=settings.processed_bucket))
    wait_for(lambda: queue_empty(settings), 30, "the three events acknowledged")
    assert snapshot(image_id) == before
    assert metrics.SKIPPED.labels("not_the_original")._value.get() - ignored_before == 3
    assert dlq_messages(settings) == []


def test_an_event_with_fields_of_the_wrong_type_goes_to_the_dlq_at_once(settings, start_worker):
    image_id = create_image(settings)
    body = json.loads(s3_event_body(settings, data.original_key(image_id, "image/jpeg"), "abc"))
    body["Records"][0]["s3"]["object"]["eTag"] = 12345  # a number where S3 sends a string
    send_body(settings, body)
    start_worker(settings)
    [msg] = wait_for(lambda: dlq_messages(settings), 30, "a DLQ message")
    assert json.loads(msg["Body"]) == body
    assert "s3.object.eTag is int 12345, not str" in msg["MessageAttributes"]["reason"]["StringValue"]
    assert msg["MessageAttributes"]["tries"]["StringValue"] == "1"  # its first delivery
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    assert record(image_id).status == "AWAITING_UPLOAD"


def test_an_upload_after_its_image_was_deleted_is_removed_after_the_grace(make_settings, start_worker):
    """The owner deleted the image, then the upload URL (still valid) was used: the original has
    no record. It is kept for the grace (a second look, re-queued with that delay), then deleted;
    nothing goes to the DLQ."""
    settings = make_settings(worker_orphan_grace_seconds=4)
    image_id = create_image(settings)
    image_records.delete(data.ImageModel(image_id))
    key = upload(settings, image_id, jpeg("chelsea"))
    start_worker(settings)
    wait_for(lambda: queue_counts(settings)[2] == 1, 30, "the second look waiting out the grace")
    assert original_exists(settings, key)  # not deleted at the first look
    wait_for(lambda: not original_exists(settings, key), 30, "the orphan original deleted")
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    assert dlq_messages(settings) == [] and processed_keys(settings) == []

