"""S3 for the API: presigned POST uploads, presigned GET downloads, object deletion.

Image bytes never pass through the API. A presigned POST's policy pins the object key, the
declared Content-Type and the declared size (a content-length-range of exactly that many bytes),
so S3 itself refuses anything else (where the server enforces policies: AWS and SeaweedFS do; moto
does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from udagram import data
from udagram.aws import client, object_exists
from udagram.data import CONTENT_TYPE_EXTENSIONS
from udagram.settings import Settings

ALLOWED_CONTENT_TYPES = tuple(CONTENT_TYPE_EXTENSIONS)


@dataclass(frozen=True)
class PresignedUpload:
    url: str
    fields: dict[str, str]
    expires_at: datetime


class Storage:
    def __init__(self, settings: Settings, s3: Any = None) -> None:
        self.settings = settings
        self.s3 = s3 or client("s3", settings)

    def presigned_upload(self, key: str, content_type: str, content_length: int) -> PresignedUpload:
        if content_type not in ALLOWED_CONTENT_TYPES:
            raise ValueError(f"content type {content_type!r} is not accepted")
        if not 1 <= content_length <= self.settings.max_upload_bytes:
            raise ValueError(f"content length {content_length} is outside 1..{self.settings.max_upload_bytes}")
        ttl = self.settings.upload_url_ttl_seconds
        post = self.s3.generate_presigned_post(
            Bucket=self.settings.originals_bucket,
            Key=key,  # boto3 adds the {"key": key} condition itself
            Fields={"Content-Type": content_type},
            Conditions=[
                {"Content-Type": content_type},
                # Exactly the declared size: a file swapped for a bigger (or cut-off) one is refused.
                ["content-length-range", content_length, content_length],
            ],
            ExpiresIn=ttl,
        )
        return PresignedUpload(
            url=post["url"],
            fields=post["fields"],
            expires_at=datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=ttl),
        )

    def download_url(self, bucket: str, key: str) -> str:
        return self.s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": key},
            ExpiresIn=self.settings.download_url_ttl_seconds,
        )

    def download_urls(self, objects: list[tuple[str, str]]) -> list[str]:
        """Presigned GET URLs of (bucket, key) pairs: a page's worth of SigV4 signatures, made in one
        worker thread (graphql_api/context.py batches them) instead of on the event loop."""
        return [self.download_url(bucket, key) for bucket, key in objects]

    def original_exists(self, key: str) -> bool:
        return object_exists(self.s3, self.settings.originals_bucket, key)

    def delete_image_objects(self, image_id: str, original_key: str, processed_key: str | None) -> None:
        """Delete an image's original and processed objects (a missing object is not an error).

        Both deterministic processed keys are removed too, in case the worker wrote its copy but
        not yet the record.
        """
        self.s3.delete_object(Bucket=self.settings.originals_bucket, Key=original_key)
        keys = {data.processed_key(image_id, "jpg"), data.processed_key(image_id, "png")}
        if processed_key:
            keys.add(processed_key)
        for key in sorted(keys):
            self.s3.delete_object(Bucket=self.settings.processed_bucket, Key=key)
