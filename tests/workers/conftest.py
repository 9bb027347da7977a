"""Worker test helpers: settings with short timeouts, image records as the API creates them,
uploads through the moto server (whose bucket notification feeds the queue), queue counts, and a
Consumer running in a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from udagram import data, image_records, resources
from udagram.aws import client
from udagram.settings import Settings

FAST = dict(
    worker_poll_seconds=1,
    worker_visibility_timeout_seconds=6,
    worker_retry_base_seconds=1,
    worker_retry_max_seconds=4,
    worker_concurrency=4,
    worker_shutdown_grace_seconds=5,
    worker_stale_processing_seconds=2,
    worker_reconcile_on_start=False,
    worker_reconcile_interval_seconds=0,
    worker_stale_upload_seconds=0,
    worker_orphan_grace_seconds=1,
)


@pytest.fixture
def make_settings(aws_settings: Settings, torchserve) -> Callable[..., Settings]:
    """Settings on the moto server and the session's TorchServe (`torchserve=` another one)."""

    def make(torchserve=torchserve, **overrides) -> Settings:
        values = dict(FAST, **torchserve.settings_overrides())
        values.update(overrides)
        settings = aws_settings.model_copy(update=values)
        resources.ensure_queues(settings)  # converge the queue's visibility timeout
        data.configure(settings)
        return settings

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


def create_image(settings: Settings, content_type: str = "image/jpeg", group_id: str = "a" * 32) -> str:
    """An image record as the API's createImage leaves it: AWAITING_UPLOAD."""
    return image_records.create(group_id=group_id, owner="alice", caption="my picture", file_name="",
                                content_type=content_type, content_length=0).id


def upload(settings: Settings, image_id: str, body: bytes, content_type: str = "image/jpeg") -> str:
    key = data.original_key(image_id, content_type)
    client("s3", settings).put_object(Bucket=settings.originals_bucket, Key=key, Body=body,
                                      ContentType=content_type)
    return key


def new_upload(settings: Settings, body: bytes, content_type: str = "image/jpeg") -> str:
    image_id = create_image(settings, content_type)
    upload(settings, image_id, body, content_type)
    return image_id


def record(image_id: str) -> data.ImageModel:
    return data.ImageModel.get(image_id, consistent_read=True)


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_status(image_ids: list[str], statuses=("DONE", "FAILED"), timeout: float = 90) -> list[data.ImageModel]:
    def finished():
        records = [record(i) for i in image_ids]
        # moto applies an UpdateItem's actions one by one, so a read can land half-way through the
        # worker's final write (status DONE, processed_at not yet set): wait for the whole write.
        done = all(r.status in statuses and (r.status != "DONE" or r.processed_at) for r in records)
        return records if done else None

    return wait_for(finished, timeout, f"images {image_ids} to reach {statuses}")  # type: ignore[return-value]


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


def original_exists(settings: Settings, key: str) -> bool:
    listed = client("s3", settings).list_objects_v2(Bucket=settings.originals_bucket, Prefix=key)
    return any(o["Key"] == key for o in listed.get("Contents", []))


def send_body(settings: Settings, body: str | dict) -> None:
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=body if isinstance(body, str) else json.dumps(body))


def processed_object(settings: Settings, key: str) -> bytes:
    return client("s3", settings).get_object(Bucket=settings.processed_bucket, Key=key)["Body"].read()


def processed_keys(settings: Settings) -> list[str]:
    out = client("s3", settings).list_objects_v2(Bucket=settings.processed_bucket)
    return [o["Key"] for o in out.get("Contents", [])]


class RunningConsumer:
    def __init__(self, settings: Settings):
        from workers.consumer import Consumer

        self.consumer = Consumer(settings)
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        self.consumer.processor.classifier.close()


@pytest.fixture
def start_worker() -> Iterator[Callable[[Settings], RunningConsumer]]:
    started: list[RunningConsumer] = []

    def start(settings: Settings) -> RunningConsumer:
        worker = RunningConsumer(settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.thread.is_alive():
            worker.stop()


def s3_event_body(settings: Settings, key: str, etag: str, size: int = 1, bucket: str | None = None) -> str:
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket or settings.originals_bucket},
               "object": {"key": key, "size": size, "eTag": etag, "sequencer": "00"}},
    }]})



def wait_settled(image_ids: list[str], statuses=("DONE", "FAILED"), timeout: float = 90) -> list[data.ImageModel]:
    """Like wait_status, but also waits for the rest of the final write: moto applies an
    UpdateItem's actions one by one, and every final write (DONE, FAILED, a re-run's kept result)
    removes the lease last."""

    def settled():
        records = [record(i) for i in image_ids]
        return records if all(r.status in statuses and r.lease_expires_at is None for r in records) else None

    return wait_for(settled, timeout, f"images {image_ids} settled in {statuses}")  # type: ignore[return-value]
