"""boto3 clients built from the settings: one place decides endpoints, region and credentials."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from udagram.settings import Settings, get_settings


def _endpoint(settings: Settings, service: str) -> str | None:
    return {
        "s3": settings.s3_endpoint_url,
        "sqs": settings.sqs_endpoint_url,
        "dynamodb": settings.dynamodb_endpoint_url,
    }.get(service)


Service = Literal["s3", "sqs", "dynamodb"]


def client(service: Service, settings: Settings | None = None, **config: Any) -> Any:
    """A boto3 client for `service` ("s3", "sqs", "dynamodb").

    Explicit endpoints (local stand-ins, or AWS_ENDPOINT_URL_*) use path-style S3 addressing,
    which every S3-compatible server understands; presigning always uses SigV4.
    """
    settings = settings or get_settings()
    endpoint = _endpoint(settings, service)
    options: dict[str, Any] = {
        "signature_version": "s3v4",
        "retries": {"mode": "standard", "max_attempts": 3},
        "connect_timeout": 5,
        "read_timeout": 30,
    }
    if service == "s3" and endpoint:
        options["s3"] = {"addressing_style": "path"}
    options.update(config)
    return boto3.session.Session().client(
        service,
        region_name=settings.aws_region,
        endpoint_url=endpoint,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        config=Config(**options),
    )


# S3's "no such object": NoSuchKey answers a GET; a HEAD answer has no body, so botocore gives its
# status ("404") as the code
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def is_not_found(exc: ClientError) -> bool:
    """Whether S3 answered that the object does not exist."""
    return exc.response.get("Error", {}).get("Code") in NOT_FOUND_CODES


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    """Whether `key` is in `bucket` (one HEAD request); any other S3 error is raised."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_not_found(exc):
            return False
        raise
    return True


@lru_cache
def cached_client(service: Service) -> Any:
    """Process-wide client for the default settings (boto3 clients are thread-safe)."""
    return client(service)
