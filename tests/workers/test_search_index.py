"""The worker keeps the label search index (udagram/labels.py) with each result: real TorchServe,
the moto server subprocess."""

from __future__ import annotations

import pytest
from pynamodb.exceptions import PynamoDBException

from tests.workers.images import jpeg
from tests.workers.uploads import new_upload
from tests.workers.waiting import record, wait_for, wait_status
from udagram import data, jobs, labels
from udagram.aws import client
from workers import render
from workers.errors import TransientError
from workers.events import ImageTask
from workers.inference_client import Classifier
from workers.processor import Outcome, Processor

pytestmark = [pytest.mark.torchserve, pytest.mark.aws]


def index_of(image_id: str) -> dict[str, float]:
    return {e.label_key: e.probability for e in data.ImageLabelModel.scan() if e.image_id == image_id}


def counts() -> dict[str, int]:
    return {row.label_key: int(row.image_count) for row in data.LabelCountModel.scan()}


def wait_indexed(image_id: str) -> data.ImageModel:
    """The record once DONE and its index update finished (right after the DONE write)."""
    wait_status([image_id])
    return wait_for(lambda: (r := record(image_id)).labels_pending is None and r, 30, "the index update")


def expected_index(rec: data.ImageModel, threshold: float) -> dict[str, float]:
    return {key: entry.probability for key, entry in labels.record_labels(rec, threshold).items()}


def test_an_image_processed_twice_is_indexed_once(settings, start_worker):
    image_id = new_upload(settings, jpeg("chelsea"))
    start_worker(settings)
    first = wait_indexed(image_id)
    assert first.status == "DONE"
    indexed = index_of(image_id)
    assert indexed and indexed == expected_index(first, settings.confidence_threshold)
    assert labels.normalise(first.predictions[0].label) in indexed  # chelsea's top class is a confident one
    assert counts() == {key: 1 for key in indexed}

    jobs.enqueue_reprocess([image_id], settings=settings)
    wait_for(lambda: record(image_id).processed_at > first.processed_at, 90, "the re-run")
    again = wait_indexed(image_id)
    assert index_of(image_id) == expected_index(again, settings.confidence_threshold)
    assert counts() == {key: 1 for key in index_of(image_id)}
    page = labels.search_page(first.predictions[0].label, 10, threshold=settings.confidence_threshold)
    assert [e.image_id for e in page.entries] == [image_id]


def test_a_result_below_the_threshold_is_titled_probably_and_not_indexed(make_settings, start_worker):
    settings = make_settings(confidence_threshold=0.99)
    image_id = new_upload(settings, jpeg("chelsea"))
    start_worker(settings)
    rec = wait_indexed(image_id)
    top = rec.predictions[0]
    assert rec.status == "DONE" and top.probability < 0.99
    assert rec.title == f"Probably {render.format_prediction(top.label, top.probability)}"
    assert index_of(image_id) == {} and counts() == {}


def test_a_crash_between_the_result_and_the_index_is_finished_by_the_redelivery(settings, monkeypatch):
    """The DONE write marks the record `labels_pending`; the index update fails (as if the worker
    died); the redelivered S3 event, a duplicate for the DONE record, finishes the index."""
    image_id = new_upload(settings, jpeg("chelsea"))
    key = data.original_key(image_id, "image/jpeg")
    etag = client("s3", settings).head_object(Bucket=settings.originals_bucket, Key=key)["ETag"].strip('"')
    task = ImageTask(image_id=image_id, source="s3", bucket=settings.originals_bucket, key=key, etag=etag)
    processor = Processor(settings, Classifier(settings))

    def lost(*args, **kwargs):
        raise PynamoDBException("DynamoDB went away")

    monkeypatch.setattr(labels, "sync_image", lost)
    with pytest.raises(TransientError, match="search index update failed"):
        processor.process(task, processor.new_token())
    crashed = record(image_id)
    assert crashed.status == "DONE" and crashed.labels_pending and index_of(image_id) == {}
    monkeypatch.undo()

    redelivered = processor.process(task, processor.new_token())
    assert redelivered.outcome is Outcome.SKIPPED  # not processed again...
    after = record(image_id)
    assert after.processed_at == crashed.processed_at and after.labels_pending is None
    assert index_of(image_id) == expected_index(after, settings.confidence_threshold) != {}  # ...but indexed
    processor.classifier.close()
