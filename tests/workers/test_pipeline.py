"""Upload -> DONE against a real TorchServe and the moto server subprocess (S3, SQS, DynamoDB)."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from tests.workers.images import encode, jpeg, noise, photo
from tests.workers.queues import dlq_messages, queue_empty, s3_event_body, send_body
from tests.workers.uploads import create_image, new_upload, processed_keys, processed_object, upload
from tests.workers.waiting import record, wait_for, wait_status
from udagram import data, jobs
from udagram.aws import client
from workers import render
from workers.events import ImageTask
from workers.inference_client import Classifier
from workers.processor import Outcome, Processor

pytestmark = [pytest.mark.torchserve, pytest.mark.aws]


def direct_prediction(settings, body: bytes) -> dict:
    r = httpx.post(f"{settings.torchserve_inference_url}/predictions/{settings.model_name}", content=body,
                   headers={"Content-Type": "application/octet-stream"}, timeout=60)
    r.raise_for_status()
    return r.json()


def test_upload_becomes_done_with_processed_image_and_the_classifiers_answer(settings, start_worker):
    body = jpeg("chelsea")
    image_id = new_upload(settings, body)
    start_worker(settings)
    [rec] = wait_status([image_id])
    expected = direct_prediction(settings, body)

    assert rec.status == "DONE", rec.error
    assert rec.title == render.format_title(expected["top5"][0], expected["prob5"][0], settings.confidence_threshold)
    assert "cat" in rec.title.lower()
    assert [p.label for p in rec.predictions] == expected["top5"]
    assert [p.probability for p in rec.predictions] == pytest.approx(expected["prob5"], abs=1e-6)
    assert rec.model_version == f"{expected['model_name']} {expected['model_version']}"
    assert rec.processed_key == data.processed_key(image_id, "jpg")
    assert rec.processed_at is not None and rec.error is None and rec.lease_owner is None
    assert rec.caption == "my picture"  # the user's words are kept
    img = Image.open(io.BytesIO(processed_object(settings, rec.processed_key)))
    assert img.format == "JPEG" and img.width == 1000 and img.height == round(300 * 1000 / 451)
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    assert dlq_messages(settings) == []


def test_widths_and_formats(settings, start_worker):
    cases = {
        "narrow": (encode(photo("coffee").resize((120, 900))), "image/jpeg", (1000, 7500), "jpg"),
        "wide": (encode(photo("coffee").resize((3000, 400))), "image/jpeg", (1000, 133), "jpg"),
        "tall": (encode(photo("chelsea").resize((600, 2400)), "PNG"), "image/png", (1000, 4000), "jpg"),
        "tiny": (encode(noise((16, 12)), "BMP"), "image/bmp", (1000, 750), "jpg"),
        "transparent": (encode(Image.new("RGBA", (400, 300), (0, 128, 0, 100)), "PNG"), "image/png",
                        (1000, 750), "png"),
    }
    ids = {name: new_upload(settings, body, ctype) for name, (body, ctype, _, _) in cases.items()}
    start_worker(settings)
    records = dict(zip(ids, wait_status(list(ids.values())), strict=True))
    for name, (_, _, size, ext) in cases.items():
        rec = records[name]
        assert rec.status == "DONE", (name, rec.error)
        assert rec.processed_key.endswith("." + ext)
        img = Image.open(io.BytesIO(processed_object(settings, rec.processed_key)))
        assert img.size == size, name


def test_downscaled_copy_keeps_the_predictions(settings):
    """The worker sends a ~584 px copy of large photos: same top 5 as the full-size original."""
    for name in ("chelsea", "coffee"):
        full = jpeg(name, size=(4000, 3000) if name == "coffee" else (4000, 2660))
        sent = render.classifier_input(full, render.decode(full, width=1000, classifier_short_side=584,
                                                           max_pixels=90_000_000), 584)
        assert len(sent) < len(full) / 5
        a, b = direct_prediction(settings, full), direct_prediction(settings, sent)
        assert a["top5"][0] == b["top5"][0]
        assert set(a["top5"][:3]) == set(b["top5"][:3])
        assert b["prob5"][0] == pytest.approx(a["prob5"][0], abs=0.05)


def test_duplicate_event_gives_one_result(settings, start_worker):
    body = jpeg("coffee")
    image_id = new_upload(settings, body)
    worker = start_worker(settings)
    [first] = wait_status([image_id])
    assert first.status == "DONE"
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    head = client("s3", settings).head_object(Bucket=settings.originals_bucket, Key=first.original_key)
    send_body(settings, s3_event_body(settings, first.original_key.replace("/", "%2F"), head["ETag"].strip('"')))
    wait_for(lambda: queue_empty(settings), 20, "duplicate acknowledged")
    again = record(image_id)
    assert again.status == "DONE" and again.processed_at == first.processed_at  # not redone
    assert again.attempts == 0 and processed_keys(settings) == [first.processed_key]
    assert dlq_messages(settings) == []
    worker.stop()


def test_two_workers_and_duplicated_events_converge(settings, start_worker):
    """Each image's event delivered three times to two workers: every image one correct DONE."""
    ids = [create_image(settings) for _ in range(4)]
    bodies = {i: jpeg("chelsea" if n % 2 else "coffee") for n, i in enumerate(ids)}
    for i in ids:
        upload(settings, i, bodies[i])
    etags = {i: client("s3", settings).head_object(Bucket=settings.originals_bucket,
                                                    Key=data.original_key(i, "image/jpeg"))["ETag"] for i in ids}
    for i in ids:
        for _ in range(2):
            send_body(settings, s3_event_body(settings, data.original_key(i, "image/jpeg"), etags[i]))
    from workers import metrics

    processed_before = metrics.PROCESSED._value.get()
    skipped_before = metrics.SKIPPED.labels("up_to_date")._value.get()
    start_worker(settings)
    start_worker(settings)
    records = wait_status(ids)
    wait_for(lambda: queue_empty(settings), 60, "all deliveries acknowledged")
    # 12 deliveries (S3's own event + 2 copies each): 4 processed, 8 recognised as duplicates.
    assert metrics.PROCESSED._value.get() - processed_before == 4
    assert metrics.SKIPPED.labels("up_to_date")._value.get() - skipped_before == 8
    for rec in records:
        expected = direct_prediction(settings, bodies[rec.id])
        assert rec.status == "DONE" and rec.lease_owner is None
        assert [p.label for p in rec.predictions] == expected["top5"]
        assert rec.title == render.format_title(expected["top5"][0], expected["prob5"][0],
                                                settings.confidence_threshold)
    assert sorted(processed_keys(settings)) == sorted(data.processed_key(i) for i in ids)
    assert dlq_messages(settings) == []


def test_leases_settle_a_race_between_two_processors(settings):
    """Worker B cannot take a live lease; once A's lease expires B takes over and A's final write
    is refused, so only B's result is recorded."""
    image_id = create_image(settings)
    upload(settings, image_id, jpeg("chelsea"))
    task = ImageTask(image_id=image_id, source="reprocess")
    a = Processor(settings.model_copy(update={"worker_visibility_timeout_seconds": 1}), Classifier(settings))
    b = Processor(settings, Classifier(settings))
    token_a, token_b = a.new_token(), b.new_token()
    assert not isinstance(a.acquire(task, token_a), type(None))
    assert record(image_id).lease_owner == token_a
    blocked = b.process(task, token_b)
    assert blocked.outcome is Outcome.DEFERRED and 0 < blocked.retry_after <= 1
    time.sleep(1.2)
    assert b.process(task, token_b).outcome is Outcome.DONE
    done = record(image_id)
    from workers.errors import LeaseLost
    with pytest.raises(LeaseLost):
        a.fail(image_id, token_a, "late write from a stale worker", None)
    assert record(image_id).status == "DONE" and record(image_id).processed_at == done.processed_at


def test_reconciliation_requeues_lost_events_and_stale_processing(settings, start_worker):
    from workers.reconcile import reconcile

    # A lost notification: the object exists but no event reaches the queue.
    client("s3", settings).put_bucket_notification_configuration(
        Bucket=settings.originals_bucket, NotificationConfiguration={})
    lost = new_upload(settings, jpeg("chelsea"))
    never_uploaded = create_image(settings)
    abandoned = create_image(settings)  # its upload URL expired long ago: it can never complete
    data.ImageModel(abandoned).update(actions=[
        data.ImageModel.status_changed_at.set("2020-01-01T00:00:00.000000Z")])
    # A worker died mid-image long ago and its message is gone.
    stale = new_upload(settings, jpeg("coffee"))
    data.ImageModel(stale).update(actions=[
        data.ImageModel.status.set("PROCESSING"),
        data.ImageModel.status_changed_at.set("2020-01-01T00:00:00.000000Z"),
        data.ImageModel.lease_owner.set("dead-worker"),
        data.ImageModel.lease_expires_at.set(time.time() - 60),
        data.ImageModel.attempts.set(1)])
    sqs = client("sqs", settings)
    sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"])  # S3's TestEvent
    assert queue_empty(settings)
    requeued_before = REGISTRY.get_sample_value("udagram_worker_reconciled_total")
    assert reconcile(settings) == 2
    assert REGISTRY.get_sample_value("udagram_worker_reconciled_total") == requeued_before + 2
    start_worker(settings)
    lost_rec, stale_rec = wait_status([lost, stale])
    assert lost_rec.status == "DONE" and stale_rec.status == "DONE"
    assert record(never_uploaded).status == "AWAITING_UPLOAD"  # its upload URL is still valid
    assert record(abandoned).status == "FAILED" and "upload never arrived" in record(abandoned).error
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    # A reconciliation re-run that arrives after the image got DONE another way changes nothing.
    jobs.enqueue_reprocess([lost], settings=settings, pending_only=True)
    wait_for(lambda: queue_empty(settings), 20, "late re-run acknowledged")
    assert record(lost).processed_at == lost_rec.processed_at


def test_reprocess_command_reruns_with_progress_and_skips_up_to_date(settings, start_worker, monkeypatch):
    from typer.testing import CliRunner

    from udagram_cli import app

    ids = [new_upload(settings, jpeg("chelsea")) for _ in range(3)]
    start_worker(settings)
    before = {r.id: r for r in wait_status(ids)}
    version = before[ids[0]].model_version.split(" ", 1)[1]
    env = {"UDAGRAM_TORCHSERVE_MANAGEMENT_URL": settings.torchserve_management_url,
           "UDAGRAM_QUEUE_NAME": settings.queue_name, "UDAGRAM_IMAGES_TABLE": settings.images_table,
           "UDAGRAM_GROUPS_TABLE": settings.groups_table, "AWS_ENDPOINT_URL": settings.sqs_endpoint_url,
           "UDAGRAM_MODE": "local",
           # the test servers take any keys; without them local mode looks for the stack's own (none here)
           "AWS_ACCESS_KEY_ID": settings.aws_access_key_id, "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key}
    from udagram.settings import get_settings
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        same = runner.invoke(app, ["reprocess", "--all", "--model-version", version])
        assert same.exit_code == 0 and "nothing to re-run" in same.output
        unknown = runner.invoke(app, ["reprocess", "--all", "--model-version", "9.9"])
        assert unknown.exit_code == 2 and "no version '9.9'" in unknown.output
        rerun = runner.invoke(app, ["reprocess", "--group", "a" * 32, "--max-outstanding", "1"])
        assert rerun.exit_code == 0, rerun.output
        assert "re-ran 3 images" in rerun.output
    finally:
        get_settings.cache_clear()
    for i in ids:
        after = record(i)
        assert after.status == "DONE" and after.processed_at > before[i].processed_at
        assert after.title == before[i].title


def test_reprocess_message_for_a_done_image_reruns_it(settings, start_worker):
    image_id = new_upload(settings, jpeg("coffee"))
    start_worker(settings)
    [first] = wait_status([image_id])
    jobs.enqueue_reprocess([image_id], settings=settings)
    wait_for(lambda: record(image_id).processed_at > first.processed_at, 60, "re-run")
    assert record(image_id).status == "DONE"
