"""Presigned POST: the policy document (moto does not enforce it) and enforcement by SeaweedFS;
expiry of the presigned upload and download URLs (SeaweedFS enforces it, moto does not)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from starlette.testclient import TestClient

from graphql_api.app import create_app
from tests.graphql_api.conftest import Api
from udagram import data
from udagram.aws import client


def _policy(upload: dict) -> dict:
    return json.loads(base64.b64decode(upload["fields"]["policy"]))


def test_policy_pins_key_type_size_and_expiry(api):
    group = api.create_group("alice")
    result = api.create_image("alice", group["id"], contentType="image/webp", contentLength=10)
    upload = result["upload"]
    key = f"originals/{result['image']['id']}.webp"
    assert upload["fields"]["key"] == key and upload["fields"]["Content-Type"] == "image/webp"
    policy = _policy(upload)
    conditions = policy["conditions"]
    assert {"key": key} in conditions
    assert {"bucket": api.settings.originals_bucket} in conditions
    assert {"Content-Type": "image/webp"} in conditions
    assert ["content-length-range", 10, 10] in conditions  # exactly the declared size
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    remaining = (expiration - datetime.now(UTC)).total_seconds()
    assert 0 < remaining <= api.settings.upload_url_ttl_seconds
    expires_at = datetime.fromisoformat(upload["expiresAt"].replace("Z", "+00:00"))
    assert abs((expires_at - expiration).total_seconds()) < 5
    assert upload["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"


@pytest.fixture
def weed_api(seaweedfs_settings):
    settings = seaweedfs_settings.model_copy(update={"max_upload_bytes": 1000})
    with TestClient(create_app(settings)) as test_client:
        yield Api(test_client, settings)


def _post(upload: dict, body: bytes, content_type: str, **field_overrides) -> httpx.Response:
    fields = {**upload["fields"], **field_overrides}
    return httpx.post(upload["url"], data=fields, files={"file": ("f", body, content_type)}, timeout=30)


def _keys(settings) -> list[str]:
    listing = client("s3", settings).list_objects_v2(Bucket=settings.originals_bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_seaweedfs_accepts_a_matching_upload(weed_api):
    group = weed_api.create_group("alice")
    result = weed_api.create_image("alice", group["id"], contentType="image/png", contentLength=500)
    assert weed_api.settings.s3_endpoint_url in result["upload"]["url"]
    response = _post(result["upload"], b"p" * 500, "image/png")
    assert response.status_code in (200, 201, 204), response.text
    assert f"originals/{result['image']['id']}.png" in _keys(weed_api.settings)


def test_seaweedfs_refuses_uploads_outside_the_policy(weed_api):
    group = weed_api.create_group("alice")
    result = weed_api.create_image("alice", group["id"], contentType="image/jpeg", contentLength=900)
    upload = result["upload"]

    too_large = _post(upload, b"j" * 1001, "image/jpeg")
    assert too_large.status_code == 400 and "EntityTooLarge" in too_large.text
    # the declared size is pinned: one byte more or less than declared is refused too
    one_more = _post(upload, b"j" * 901, "image/jpeg")
    assert one_more.status_code == 400 and "EntityTooLarge" in one_more.text
    one_less = _post(upload, b"j" * 899, "image/jpeg")
    assert one_less.status_code == 400 and "EntityTooSmall" in one_less.text

    not_an_image = _post(upload, b"<html></html>", "text/html", **{"Content-Type": "text/html"})
    assert not_an_image.status_code == 403, not_an_image.text

    other_key = _post(upload, b"j" * 10, "image/jpeg", key="originals/" + "f" * 32 + ".jpg")
    assert other_key.status_code == 403, other_key.text

    assert _keys(weed_api.settings) == []  # nothing got in
    # ... and the declared size over the limit is refused before any URL is handed out
    refused = weed_api.create_image("alice", group["id"], contentLength=1001)
    assert refused["__typename"] == "UploadTooLarge" and refused["maxBytes"] == 1000


SHORT_TTL_SECONDS = 3  # long enough for the immediate use below on a busy machine, short to wait out


@pytest.fixture
def short_ttl_api(seaweedfs_settings):
    settings = seaweedfs_settings.model_copy(
        update={"upload_url_ttl_seconds": SHORT_TTL_SECONDS, "download_url_ttl_seconds": SHORT_TTL_SECONDS})
    with TestClient(create_app(settings)) as test_client:
        yield Api(test_client, settings)


def _sleep_past(moment: float) -> None:
    """Sleep until 1.5 s after `moment` (time.time()): S3 compares at second precision."""
    time.sleep(max(0.0, moment + 1.5 - time.time()))


def test_seaweedfs_refuses_expired_presigned_urls(short_ttl_api):
    """Both presigned URLs the API hands out die after their TTL: the upload POST (its policy's
    expiration) and the download GET (X-Amz-Expires). Each works while fresh."""
    api = short_ttl_api
    group = api.create_group("alice")
    issued = time.time()
    used_at_once = api.create_image("alice", group["id"], contentType="image/png", contentLength=8)
    used_late = api.create_image("alice", group["id"], contentType="image/png", contentLength=8)
    assert _post(used_at_once["upload"], b"\x89PNG....", "image/png").status_code in (200, 201, 204)

    image_id = used_at_once["image"]["id"]
    data.ImageModel.get(image_id).update(actions=[data.ImageModel.status.set("PROCESSING")])  # imageUrl shows now
    url_issued = time.time()
    url = api.gql("query($id: ID!) { image(id: $id) { imageUrl } }", {"id": image_id})["image"]["imageUrl"]
    assert f"X-Amz-Expires={SHORT_TTL_SECONDS}" in url
    fresh = httpx.get(url, timeout=30)
    assert fresh.status_code == 200 and fresh.content == b"\x89PNG...."

    _sleep_past(issued + SHORT_TTL_SECONDS)
    late = _post(used_late["upload"], b"\x89PNG....", "image/png")
    assert late.status_code == 403 and "Policy expired" in late.text, late.text
    assert f"originals/{used_late['image']['id']}.png" not in _keys(api.settings)

    _sleep_past(url_issued + SHORT_TTL_SECONDS)
    expired = httpx.get(url, timeout=30)
    assert expired.status_code == 403 and "Request has expired" in expired.text, expired.text
    assert b"\x89PNG" not in expired.content
