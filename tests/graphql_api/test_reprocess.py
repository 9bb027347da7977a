"""reprocessImage under repetition: re-runs of an image already queued are coalesced (one message),
and each user has a rate limit shared by every API process (udagram/ratelimit.py, DynamoDB)."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from graphql_api.app import create_app
from tests.graphql_api.conftest import Api, queued_reprocess_ids
from udagram import data, jobs
from udagram.aws import client
from workers.events import ImageTask
from workers.processor import Processor

REPROCESS_LIMITED = """
mutation($id: ID!) {
  reprocessImage(id: $id) {
    __typename ... on Image { id status } ... on RateLimited { retryAfterSeconds } ... on Error { code message }
  }
}"""


def uploaded_image(api: Api, user: str) -> str:
    group = api.create_group(user)
    image_id = api.create_image(user, group["id"], contentLength=5)["image"]["id"]
    record = data.ImageModel.get(image_id)
    client("s3", api.settings).put_object(Bucket=api.settings.originals_bucket, Key=record.original_key, Body=b"bytes")
    return image_id


def reprocess(api: Api, image_id: str, user: str) -> dict:
    return api.gql(REPROCESS_LIMITED, {"id": image_id}, user=user)["reprocessImage"]


@pytest.fixture
def limited_api(aws_settings):
    """The default limit (10 calls) in a window too long to end during the test: a fixed window
    ending mid-test (a minute boundary on a slow machine) would let a second batch through."""
    settings = aws_settings.model_copy(update={"reprocess_rate_limit": 10,
                                               "reprocess_rate_limit_window_seconds": 10**9})
    with TestClient(create_app(settings)) as test_client:
        yield Api(test_client, settings)


@pytest.fixture
def unlimited_api(aws_settings):
    """The API with a rate limit out of the way, to look at coalescing alone."""
    settings = aws_settings.model_copy(update={"reprocess_rate_limit": 1000})
    with TestClient(create_app(settings)) as test_client:
        yield Api(test_client, settings)


def test_fifty_reprocess_calls_queue_one_rerun(limited_api):
    """The outside test ran 40+ full re-runs for 50 calls on one image."""
    api = limited_api
    image_id = uploaded_image(api, "alice")
    answers = [reprocess(api, image_id, "alice") for _ in range(50)]

    assert queued_reprocess_ids(api.settings) == [image_id]  # exactly one re-run message
    limit = api.settings.reprocess_rate_limit
    assert [a["__typename"] for a in answers] == ["Image"] * limit + ["RateLimited"] * (50 - limit)
    assert all(a["status"] == "PROCESSING" for a in answers[:limit])  # coalesced ones: the image as is
    refused = answers[limit]
    assert refused["code"] == "RATE_LIMITED" and f"at most {limit} re-runs" in refused["message"]
    assert 1 <= refused["retryAfterSeconds"] <= api.settings.reprocess_rate_limit_window_seconds


def test_the_rate_limit_is_per_user(limited_api):
    api = limited_api
    alices, bobs = uploaded_image(api, "alice"), uploaded_image(api, "bob")
    limit = api.settings.reprocess_rate_limit
    assert [reprocess(api, alices, "alice")["__typename"] for _ in range(limit + 1)][-1] == "RateLimited"
    # bob's calls are not counted with alice's
    assert {reprocess(api, bobs, "bob")["__typename"] for _ in range(limit)} == {"Image"}
    assert reprocess(api, bobs, "bob")["__typename"] == "RateLimited"
    assert sorted(queued_reprocess_ids(api.settings)) == sorted([alices, bobs])


def test_a_worker_picking_the_image_up_ends_the_coalescing(unlimited_api):
    api = unlimited_api
    image_id = uploaded_image(api, "alice")
    reprocess(api, image_id, "alice")
    reprocess(api, image_id, "alice")
    assert queued_reprocess_ids(api.settings) == [image_id]
    assert data.ImageModel.get(image_id).rerun_requested_at is not None

    # the worker leases the image for its re-run: the marker goes with the lease
    leased = Processor(api.settings).acquire(ImageTask(image_id=image_id, source="reprocess"), Processor.new_token())
    assert isinstance(leased, data.ImageModel)
    assert data.ImageModel.get(image_id, consistent_read=True).rerun_requested_at is None
    # so a request now (the run in progress may be of the old picture or model) queues a new one
    reprocess(api, image_id, "alice")
    reprocess(api, image_id, "alice")
    assert queued_reprocess_ids(api.settings) == [image_id]


def test_a_failed_enqueue_leaves_no_marker_behind(unlimited_api, monkeypatch):
    api = unlimited_api
    image_id = uploaded_image(api, "alice")

    def sqs_down(*args, **kwargs):
        raise RuntimeError("SQS unreachable")

    monkeypatch.setattr(jobs, "enqueue_reprocess", sqs_down)
    failed = api.post(REPROCESS_LIMITED, {"id": image_id}, user="alice").json()
    assert failed["errors"][0]["message"] == "Unexpected error."
    assert data.ImageModel.get(image_id, consistent_read=True).rerun_requested_at is None
    monkeypatch.undo()
    assert reprocess(api, image_id, "alice")["__typename"] == "Image"  # the retry queues it
    assert queued_reprocess_ids(api.settings) == [image_id]


def test_a_stale_marker_does_not_block_a_rerun(unlimited_api):
    """A marker older than the worker's stale-processing time (its message lost and the image
    re-queued by reconciliation meanwhile, or not): a new request queues again."""
    api = unlimited_api
    image_id = uploaded_image(api, "alice")
    stale = time.time() - api.settings.worker_stale_processing_seconds - 5
    data.ImageModel.get(image_id).update(actions=[data.ImageModel.rerun_requested_at.set(stale)])
    assert reprocess(api, image_id, "alice")["__typename"] == "Image"
    assert queued_reprocess_ids(api.settings) == [image_id]
