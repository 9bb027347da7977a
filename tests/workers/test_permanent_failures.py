"""Messages that can never succeed end, with a reason, instead of looping: an unknown model
version, a missing bucket, and any message whose tries (carried across re-sends) are used up.
One message's failure never pauses intake for the others."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.fixtures.ports import free_port
from tests.workers.images import jpeg
from tests.workers.queues import dlq_messages, dlq_reasons, queue_empty
from tests.workers.uploads import create_image, new_upload, upload
from tests.workers.waiting import record, wait_for, wait_settled, wait_status
from udagram import data, jobs
from udagram.aws import client

pytestmark = [pytest.mark.torchserve, pytest.mark.aws]


def test_a_rerun_to_an_unknown_model_version_keeps_the_result_while_uploads_flow(settings, start_worker):
    """TorchServe answers 404 for /predictions/classifier/9.9: the re-run is rejected at once, the
    image keeps its DONE result with the reason, and the circuit breaker never pauses intake."""
    image_id = new_upload(settings, jpeg("chelsea"))
    worker = start_worker(settings)
    [before] = wait_settled([image_id])
    assert before.status == "DONE", before.error
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    jobs.enqueue_reprocess([image_id], "9.9", settings=settings)
    others = [new_upload(settings, jpeg("coffee")) for _ in range(3)]
    assert [r.status for r in wait_status(others)] == ["DONE"] * 3

    def rerun_noted():
        rec = record(image_id)
        return rec if rec.error and rec.lease_expires_at is None else None

    after = wait_for(rerun_noted, 30, "the re-run's error")
    assert after.status == "DONE"
    assert "re-run failed" in after.error and "no version 9.9" in after.error, after.error
    assert (after.title, after.processed_key, after.processed_at, after.model_version, after.source_etag) == (
        before.title, before.processed_key, before.processed_at, before.model_version, before.source_etag)
    assert [p.label for p in after.predictions] == [p.label for p in before.predictions]
    assert after.lease_owner is None and after.attempts == 0
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    assert dlq_messages(settings) == []
    assert worker.consumer.circuit.trips == 0
    # A later successful run clears the note.
    jobs.enqueue_reprocess([image_id], settings=settings)
    wait_for(lambda: record(image_id).processed_at > before.processed_at, 60, "the re-run")
    [rerun] = wait_settled([image_id])
    assert rerun.status == "DONE" and rerun.error is None


def test_a_missing_default_model_pauses_intake_only_while_it_may_be_registering(make_settings, start_worker,
                                                                               torchserve_factory):
    """TorchServe up but answering 404 for /predictions/classifier: taken for a model still
    registering, so intake pauses and resumes as soon as it is back; when it does not come back,
    intake resumes after the grace and the image ends after worker_max_message_tries."""
    from handlers.archive import DEFAULT_VERSION, archive_path
    from udagram.model_management import ManagementClient

    torchserve = torchserve_factory()
    settings = make_settings(torchserve=torchserve, worker_max_message_tries=3, queue_max_receive_count=2,
                             worker_model_missing_grace_seconds=20)
    models = ManagementClient(torchserve.management_url, settings.model_name)

    def unregister() -> None:
        gone = httpx.delete(f"{torchserve.management_url}/models/{settings.model_name}/{DEFAULT_VERSION}",
                            timeout=60)
        assert gone.status_code == 200, gone.text

    unregister()
    worker = start_worker(settings)
    registering = new_upload(settings, jpeg("chelsea"))
    wait_for(lambda: worker.consumer.circuit.is_open, 30, "intake paused")
    models.register(archive_path(torchserve.model_store, DEFAULT_VERSION).name)
    [rec] = wait_status([registering], timeout=60)
    assert rec.status == "DONE", rec.error

    unregister()
    removed = new_upload(settings, jpeg("coffee"))
    [rec] = wait_settled([removed], timeout=120)
    assert rec.status == "FAILED" and "gave up after 3 tries" in rec.error, rec.error
    assert "has no model classifier" in rec.error, rec.error
    [reason] = wait_for(lambda: dlq_reasons(settings), 20, "the DLQ message")
    assert removed in reason and "gave up after 3 tries" in reason
    # Paused once per absence (the first until the model was back, the second for the grace only).
    assert worker.consumer.circuit.trips == 2 and not worker.consumer.circuit.is_open


def test_tries_are_bounded_across_re_sends(make_settings, start_worker):
    """S3 unreachable for good: every try is transient and re-sent (receive counts reset), but the
    re-sent message carries its tries, so the image ends FAILED after worker_max_message_tries
    and the message is in the DLQ with the reason, instead of looping forever."""
    settings = make_settings(worker_max_message_tries=4, queue_max_receive_count=2)
    worker = start_worker(settings)
    worker.consumer.processor.s3 = client("s3", settings.model_copy(
        update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}))
    image_id = new_upload(settings, jpeg("chelsea"))  # after the swap: no try may reach S3
    [rec] = wait_settled([image_id], timeout=120)
    assert rec.status == "FAILED", rec.error
    assert "gave up after 4 tries; last error: download of the original failed" in rec.error, rec.error
    assert rec.attempts == 1 and rec.lease_owner is None  # the last lease only: transient tries are given back
    [msg] = wait_for(lambda: dlq_messages(settings), 20, "the DLQ message")
    assert msg["MessageAttributes"]["tries"]["StringValue"] == "4"
    assert "gave up after 4 tries" in msg["MessageAttributes"]["reason"]["StringValue"]
    assert json.loads(msg["Body"])["Records"][0]["s3"]["object"]["key"].endswith(f"{image_id}.jpg")
    wait_for(lambda: queue_empty(settings), 20, "queue drained")


@pytest.mark.parametrize("missing", ["originals", "processed"])
def test_a_missing_bucket_finishes_the_image_and_dead_letters_the_message(make_settings, start_worker, missing):
    """NoSuchBucket is a configuration problem, not a passing fault: the image is FAILED with the
    reason at the first try, and the message kept in the DLQ to redrive once it is fixed."""
    real = make_settings()
    client("s3", real).put_bucket_notification_configuration(Bucket=real.originals_bucket,
                                                             NotificationConfiguration={})
    image_id = create_image(real)
    upload(real, image_id, jpeg("chelsea"))
    bucket = f"no-such-bucket-{data.new_id()[:8]}"
    settings = make_settings(**{f"{missing}_bucket": bucket})
    jobs.enqueue_reprocess([image_id], settings=settings)
    worker = start_worker(settings)
    [rec] = wait_settled([image_id])
    assert rec.status == "FAILED" and f"the bucket {bucket} does not exist" in rec.error, rec.error
    [reason] = wait_for(lambda: dlq_reasons(settings), 20, "the DLQ message")
    assert image_id in reason and bucket in reason
    wait_for(lambda: queue_empty(settings), 20, "queue drained")
    assert worker.consumer.circuit.trips == 0
