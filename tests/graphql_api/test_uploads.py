"""Presigned POST: the policy document (moto does not enforce it) and enforcement by SeaweedFS."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import httpx
import pytest
from starlette.testclient import TestClient

from graphql_api.app import create_app
from tests.graphql_api.conftest import Api
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
    assert ["content-length-range", 1, api.settings.max_upload_bytes] in conditions
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    remaining = (expiration - datetime.now(timezone.utc)).total_seconds()
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

    not_an_image = _post(upload, b"<html></html>", "text/html", **{"Content-Type": "text/html"})
    assert not_an_image.status_code == 403, not_an_image.text

    other_key = _post(upload, b"j" * 10, "image/jpeg", key="originals/" + "f" * 32 + ".jpg")
    assert other_key.status_code == 403, other_key.text

    assert _keys(weed_api.settings) == []  # nothing got in
    # ... and the declared size over the limit is refused before any URL is handed out
    refused = weed_api.create_image("alice", group["id"], contentLength=1001)
    assert refused["__typename"] == "UploadTooLarge" and refused["maxBytes"] == 1000
