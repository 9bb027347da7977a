"""Presigned download URLs of a page: signed off the event loop, in one batch, and served by S3
(SeaweedFS, which checks the signature)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from starlette.testclient import TestClient

from graphql_api.app import create_app
from graphql_api.storage import Storage
from tests.graphql_api.conftest import Api
from udagram import data
from udagram.aws import client

PAGE = """query($id: ID!) { group(id: $id) {
  images(first: 50) { edges { node { id imageUrl processedImageUrl } } } } }"""


@pytest.fixture
def weed_api(seaweedfs_settings):
    with TestClient(create_app(seaweedfs_settings)) as test_client:
        yield Api(test_client, seaweedfs_settings)


def _uploaded_and_processed(api: Api, group_id: str, n: int) -> dict[str, tuple[bytes, bytes]]:
    """`n` images whose original and processed copy are in the buckets; id -> (original, processed)."""
    s3 = client("s3", api.settings)
    contents = {}
    for i in range(n):
        image_id = api.create_image("alice", group_id, contentLength=10)["image"]["id"]
        original, processed = f"original {i}".encode(), f"processed {i}".encode()
        record = data.ImageModel.get(image_id)
        s3.put_object(Bucket=api.settings.originals_bucket, Key=record.original_key, Body=original)
        s3.put_object(Bucket=api.settings.processed_bucket, Key=data.processed_key(image_id), Body=processed)
        record.update(actions=[data.ImageModel.status.set(data.ImageStatus.DONE.value),
                               data.ImageModel.processed_key.set(data.processed_key(image_id))])
        contents[image_id] = (original, processed)
    return contents


def test_a_page_is_signed_off_the_event_loop_in_one_batch(weed_api, monkeypatch):
    group = weed_api.create_group("alice")
    contents = _uploaded_and_processed(weed_api, group["id"], 12)

    signed_on: list[str] = []  # where each signature was made
    batches: list[int] = []
    download_url, download_urls = Storage.download_url, Storage.download_urls

    def recording_url(self, bucket, key):
        try:
            asyncio.get_running_loop()
            signed_on.append("event loop")
        except RuntimeError:
            signed_on.append(threading.current_thread().name)
        return download_url(self, bucket, key)

    def recording_urls(self, objects):
        batches.append(len(objects))
        return download_urls(self, objects)

    monkeypatch.setattr(Storage, "download_url", recording_url)
    monkeypatch.setattr(Storage, "download_urls", recording_urls)
    edges = weed_api.gql(PAGE, {"id": group["id"]})["group"]["images"]["edges"]

    assert len(signed_on) == 24 and "event loop" not in signed_on, signed_on
    assert batches == [24]  # both URLs of all 12 images: one worker-thread call
    for edge in edges:
        original, processed = contents[edge["node"]["id"]]
        for url, body in ((edge["node"]["imageUrl"], original), (edge["node"]["processedImageUrl"], processed)):
            assert weed_api.settings.s3_endpoint_url in url and "X-Amz-Signature=" in url
            response = httpx.get(url, timeout=30)
            assert response.status_code == 200 and response.content == body, (url, response.text)
    # and a tampered signature is refused: the URLs are really checked
    tampered = edges[0]["node"]["imageUrl"].replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert httpx.get(tampered, timeout=30).status_code == 403
