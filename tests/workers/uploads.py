"""Uploads as the API and a browser make them (a record AWAITING_UPLOAD, then the original put
into the moto server's bucket, whose notification feeds the queue), and the objects in both buckets."""

from __future__ import annotations

from udagram import data, image_records
from udagram.aws import client
from udagram.settings import Settings


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


def original_exists(settings: Settings, key: str) -> bool:
    listed = client("s3", settings).list_objects_v2(Bucket=settings.originals_bucket, Prefix=key)
    return any(o["Key"] == key for o in listed.get("Contents", []))


def processed_object(settings: Settings, key: str) -> bytes:
    return client("s3", settings).get_object(Bucket=settings.processed_bucket, Key=key)["Body"].read()


def processed_keys(settings: Settings) -> list[str]:
    out = client("s3", settings).list_objects_v2(Bucket=settings.processed_bucket)
    return [o["Key"] for o in out.get("Contents", [])]
