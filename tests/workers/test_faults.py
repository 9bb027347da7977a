"""Bad input and faults: the final record, objects and queues (including the DLQ)."""

from __future__ import annotations

import json
import time

import pytest

from tests.workers.images import bomb_png, jpeg
from tests.workers.queues import dlq_messages, queue_empty, send_body
from tests.workers.uploads import create_image, new_upload, original_exists, processed_keys, upload
from tests.workers.waiting import record, wait_for, wait_status
from udagram import data, image_records
from udagram.aws import client

pytestmark = [pytest.mark.torchserve, pytest.mark.aws]


def test_poison_inputs_end_failed_with_a_readable_error(make_settings, start_worker):
    settings = make_settings(max_original_bytes=2_000_000)
    cases = {
        "garbage": (b"these bytes are not an image" * 10, "image/jpeg", "not an image"),
        "truncated": (jpeg("chelsea")[:3000], "image/jpeg", "truncated"),
        "empty": (b"", "image/jpeg", "empty"),
        "bomb": (bomb_png(), "image/png", "too large"),
        "too big": (b"\xff\xd8" + b"0" * 2_100_000, "image/jpeg", "limit"),
    }
    ids = {name: new_upload(settings, body, ctype) for name, (body, ctype, _) in cases.items()}
    good = new_upload(settings, jpeg("coffee"))
    start_worker(settings)
    records = dict(zip(ids, wait_status(list(ids.values())), strict=True))
    for name, (_, _, phrase) in cases.items():
        rec = records[name]
        assert rec.status == "FAILED", name
        assert phrase in rec.error, (name, rec.error)
        assert " at 0x" not in rec.error, rec.error  # no Python object reprs shown to users
        assert rec.processed_key is None and rec.lease_owner is None
    assert wait_status([good])[0].status == "DONE"
    assert processed_keys(settings) == [data.processed_key(good)]
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    assert dlq_messages(settings) == []


def test_garbage_messages_go_to_the_dlq_and_test_events_are_acknowledged(settings, start_worker):
    send_body(settings, "this is not json")
    send_body(settings, {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": settings.originals_bucket})
    send_body(settings, {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                      "s3": {"bucket": {"name": "x"}, "object": {"key": "cats/tom.jpg"}}}]})
    start_worker(settings)
    wait_for(lambda: queue_empty(settings), 30, "queue drained")
    [msg] = dlq_messages(settings)
    assert msg["Body"] == "this is not json"
    assert "not JSON" in msg["MessageAttributes"]["reason"]["StringValue"]


def test_deleted_image_is_acknowledged(settings, start_worker):
    """The user deleted the image (record and object) before the worker got to it."""
    image_id = create_image(settings)
    key = upload(settings, image_id, jpeg("chelsea"))
    image_records.delete(data.ImageModel(image_id))
    client("s3", settings).delete_object(Bucket=settings.originals_bucket, Key=key)
    start_worker(settings)
    wait_for(lambda: queue_empty(settings), 30, "queue drained")
    assert dlq_messages(settings) == [] and processed_keys(settings) == []


def test_repeatedly_dying_deliveries_end_failed_after_max_attempts(make_settings, start_worker):
    """An image whose deliveries keep getting abandoned (e.g. workers killed mid-image) is
    retried a bounded number of times, then FAILED with a readable error."""
    settings = make_settings(worker_max_attempts=2)
    image_id = new_upload(settings, jpeg("chelsea"))
    data.ImageModel(image_id).update(actions=[data.ImageModel.attempts.set(2),
                                              data.ImageModel.error.set("worker killed")])
    start_worker(settings)
    [rec] = wait_status([image_id])
    assert rec.status == "FAILED" and "gave up after 2 attempts" in rec.error and "worker killed" in rec.error
    wait_for(lambda: queue_empty(settings), 20, "queue drained")


def test_heartbeat_keeps_a_slow_image_from_being_delivered_twice(make_settings, start_worker, monkeypatch):
    """Processing takes longer than the visibility timeout: the heartbeat extends the message
    and the lease, so nobody else receives it and it is processed exactly once."""
    from workers.inference_client import Classifier

    settings = make_settings(worker_visibility_timeout_seconds=2)
    real_predict = Classifier._predict_once
    calls: list[str] = []

    def slow_predict(self, image, version=None):
        calls.append("predict")
        time.sleep(6)  # three visibility timeouts
        return real_predict(self, image, version)

    monkeypatch.setattr(Classifier, "_predict_once", slow_predict)
    image_id = new_upload(settings, jpeg("chelsea"))
    start_worker(settings)
    [rec] = wait_status([image_id])
    assert rec.status == "DONE"
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    time.sleep(2.5)  # a redelivery would show up now
    assert calls == ["predict"]
    assert queue_empty(settings) and record(image_id).processed_at == rec.processed_at


def test_s3_outage_is_retried_without_burning_the_image(settings, start_worker):
    """S3 unreachable: the lease is given back without counting the try, the message comes back
    after a back-off, and once S3 answers again the image is DONE; nothing in the DLQ."""
    from tests.fixtures.ports import free_port
    from workers import metrics

    dead = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    before = metrics.RETRIES.labels("transient")._value.get()
    worker = start_worker(settings)
    good_s3 = worker.consumer.processor.s3
    worker.consumer.processor.s3 = client("s3", dead)
    image_id = new_upload(settings, jpeg("chelsea"))
    wait_for(lambda: metrics.RETRIES.labels("transient")._value.get() >= before + 2, 60, "two failed tries")
    rec = record(image_id)
    assert rec.status == "PROCESSING" and rec.attempts == 0 and rec.lease_owner is None
    worker.consumer.processor.s3 = good_s3
    [done] = wait_status([image_id])
    assert done.status == "DONE" and done.attempts == 0
    wait_for(lambda: queue_empty(settings), 30, "queue drained")
    assert dlq_messages(settings) == []


def test_image_deleted_while_processing_leaves_nothing_behind(settings, start_worker, monkeypatch):
    from workers.inference_client import Classifier

    image_id = create_image(settings)
    real_predict = Classifier._predict_once

    def predict_then_owner_deletes(self, image, version=None):
        answer = real_predict(self, image, version)
        image_records.delete(data.ImageModel(image_id))  # the API's deleteImage, mid-processing
        return answer

    monkeypatch.setattr(Classifier, "_predict_once", predict_then_owner_deletes)
    worker = start_worker(settings)
    key = upload(settings, image_id, jpeg("chelsea"))
    # The original, left without record (the owner's delete raced the upload), goes too.
    wait_for(lambda: not original_exists(settings, key), 60, "the original without record deleted")
    wait_for(lambda: queue_empty(settings), 20, "the message acknowledged")
    assert processed_keys(settings) == []
    assert dlq_messages(settings) == []
    with pytest.raises(data.ImageModel.DoesNotExist):
        record(image_id)
    worker.stop()


def test_a_lost_queue_is_recreated_and_its_images_reconciled(make_settings, start_worker):
    """A local queue server restarted empty: the queues and their messages are gone."""
    # Only the loss may trigger a pass, and it must take the upload although it is fresh.
    settings = make_settings(worker_reconcile_interval_seconds=3600, worker_stale_upload_seconds=3600)
    start_worker(settings)
    # The upload's event is lost with the queue: nothing but reconciliation can find the image.
    client("s3", settings).put_bucket_notification_configuration(
        Bucket=settings.originals_bucket, NotificationConfiguration={})
    image_id = new_upload(settings, jpeg("chelsea"))
    sqs = client("sqs", settings)
    for name in (settings.queue_name, settings.dead_letter_queue_name):
        sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
    [rec] = wait_status([image_id], timeout=60)
    assert rec.status == "DONE", rec.error
    url = sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
    redrive = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
                         ["Attributes"]["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(settings.dead_letter_queue_name)
    assert processed_keys(settings) == [data.processed_key(image_id)]


def test_periodic_reconciliation_finds_an_upload_whose_event_was_lost(make_settings, start_worker):
    settings = make_settings(worker_reconcile_interval_seconds=1, worker_stale_upload_seconds=2)
    client("s3", settings).put_bucket_notification_configuration(
        Bucket=settings.originals_bucket, NotificationConfiguration={})
    start_worker(settings)
    image_id = new_upload(settings, jpeg("chelsea"))
    [rec] = wait_status([image_id], timeout=60)
    assert rec.status == "DONE", rec.error
    assert processed_keys(settings) == [data.processed_key(image_id)]


def test_a_queue_recreated_by_another_process_is_noticed(make_settings):
    """The S3 event bridge may re-create a lost queue before the worker finds it missing."""
    from udagram import resources
    from workers.consumer import Consumer

    settings = make_settings()
    consumer = Consumer(settings)
    try:
        assert consumer.check_queue_identity() is False  # the same queue: nothing to do
        sqs = client("sqs", settings)
        for name in (settings.queue_name, settings.dead_letter_queue_name):
            sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
        time.sleep(1.1)  # creation times have a resolution of one second
        resources.ensure_queues(settings)
        assert consumer.check_queue_identity() is True
        assert consumer.queue_was_lost and consumer.reconcile_requested.is_set()
        assert consumer.check_queue_identity() is False  # noticed once
    finally:
        consumer.processor.classifier.close()
