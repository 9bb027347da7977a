"""Idempotent creation of everything the app needs in S3, SQS and DynamoDB.

`ensure_resources(settings)` is called by the API and the worker on start and by the local stack;
running it again changes nothing. With `settings.create_resources = False` (a locked-down AWS
account where infrastructure is provisioned elsewhere) it creates nothing.

- DynamoDB: every table of `data.MODELS` (groups, images, the label index; `data.ensure_tables`).
- S3: the originals and processed buckets, private (public access blocked where the server
  supports it); CORS on the originals bucket lets the web page's own origin POST uploads to it
  directly (nothing else, no other origin); no CORS on the processed bucket. In mode=local only
  the stack's admin identity may create and configure buckets (`udagram up` does, before the
  API and the worker start): with another identity the buckets are left to it.
- SQS: the uploads queue with a dead-letter queue (redrive after `queue_max_receive_count`
  receives) and a policy letting S3 (only from the originals bucket) send to it.
- The originals bucket's notification `s3:ObjectCreated:*` on `originals/` -> the uploads queue,
  where the S3 server supports it (AWS and moto do; SeaweedFS does not: the local stack bridges
  its filer events into the same S3-shaped messages).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from botocore.exceptions import ClientError

from udagram import data
from udagram.aws import client
from udagram.settings import Settings, get_settings

log = structlog.get_logger(__name__)

UPLOADS_PREFIX = "originals/"


@dataclass(frozen=True)
class Resources:
    queue_url: str | None
    queue_arn: str | None
    dead_letter_queue_url: str | None
    bucket_notifications: bool  # False where the S3 server has no notification API


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


# SeaweedFS answers CORS on a bucket with no configuration of its own from its global
# allowed-origins list (the page's origins, `udagram.stack.seaweedfs.command`). Locally the
# processed bucket gets a rule no browser can match, as an Origin header never has a path.
NO_BROWSER_ORIGIN = "http://no-cross-origin-access.invalid/"


def ensure_buckets(settings: Settings, s3: Any = None) -> None:
    if settings.mode == "local" and settings.local_identity != "admin":
        log.info("buckets are created by the admin identity (udagram up)", identity=settings.local_identity)
        return
    s3 = s3 or client("s3", settings)
    for bucket in (settings.originals_bucket, settings.processed_bucket):
        try:
            if settings.aws_region == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                s3.create_bucket(
                    Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": settings.aws_region}
                )
        except ClientError as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        try:
            s3.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
        except ClientError as exc:  # not every S3-compatible server has this API
            log.info("public access block not supported", bucket=bucket, error=_error_code(exc))
    # Browsers POST uploads straight to the originals bucket from the web page's origin, with no
    # header of their own beyond the form's Content-Type (SeaweedFS reads no AllowedHeaders as "all").
    rules = {settings.originals_bucket: {"AllowedOrigins": settings.page_origins, "AllowedMethods": ["POST"],
                                         "AllowedHeaders": ["Content-Type"], "MaxAgeSeconds": 3600}}
    if settings.mode == "local":
        rules[settings.processed_bucket] = {"AllowedOrigins": [NO_BROWSER_ORIGIN], "AllowedMethods": ["HEAD"]}
    for bucket, rule in rules.items():
        try:
            s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule]})
        except ClientError as exc:
            log.warning("bucket CORS not supported", bucket=bucket, error=_error_code(exc))


def queue_missing(exc: BaseException) -> bool:
    """Whether an SQS call failed because the queue does not exist (e.g. a local queue server that
    restarted empty)."""
    return isinstance(exc, ClientError) and _error_code(exc) in (
        "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def _queue_url(sqs: Any, name: str) -> str | None:
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if queue_missing(exc):
            return None
        raise


def _ensure_queue(sqs: Any, name: str, attributes: dict[str, str]) -> str:
    url = _queue_url(sqs, name)
    if url is None:
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)  # converge an existing queue
    return url


def _queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def ensure_queues(settings: Settings, sqs: Any = None) -> tuple[str, str, str]:
    """The uploads queue and its DLQ; returns (queue url, queue arn, dlq url)."""
    sqs = sqs or client("sqs", settings)
    dlq_url = _ensure_queue(sqs, settings.dead_letter_queue_name, {"MessageRetentionPeriod": "1209600"})
    dlq_arn = _queue_arn(sqs, dlq_url)
    queue_url = _ensure_queue(
        sqs,
        settings.queue_name,
        {
            "VisibilityTimeout": str(settings.worker_visibility_timeout_seconds),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(settings.queue_max_receive_count)}
            ),
        },
    )
    queue_arn = _queue_arn(sqs, queue_url)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowOriginalsBucketEvents",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{settings.originals_bucket}"}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    return queue_url, queue_arn, dlq_url


def ensure_bucket_notification(settings: Settings, queue_arn: str, s3: Any = None) -> bool:
    """ObjectCreated on the originals bucket -> the uploads queue; False if unsupported."""
    s3 = s3 or client("s3", settings)
    configuration = {
        "QueueConfigurations": [
            {
                "Id": "udagram-uploads",
                "QueueArn": queue_arn,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": UPLOADS_PREFIX}]}},
            }
        ]
    }
    try:
        current = s3.get_bucket_notification_configuration(Bucket=settings.originals_bucket)
        if current.get("QueueConfigurations") == configuration["QueueConfigurations"]:
            return True
        s3.put_bucket_notification_configuration(
            Bucket=settings.originals_bucket, NotificationConfiguration=configuration
        )
        return True
    except ClientError as exc:
        if settings.mode == "aws":
            raise  # on AWS this is a real failure (e.g. a missing permission)
        # S3-compatible servers answer this in various ways (SeaweedFS: BucketAlreadyOwnedByYou).
        log.info("S3 server has no bucket notifications; the local stack bridges them",
                 bucket=settings.originals_bucket, error=_error_code(exc))
        return False


def ensure_resources(settings: Settings | None = None) -> Resources:
    settings = settings or get_settings()
    if not settings.create_resources:
        data.configure(settings)
        return Resources(None, None, None, bucket_notifications=False)
    # Tables, buckets and queues are independent: create them side by side (faster starts).
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="ensure-resources") as pool:
        tables = pool.submit(data.ensure_tables, settings)
        buckets = pool.submit(ensure_buckets, settings)
        queues = pool.submit(ensure_queues, settings)
        tables.result()
        buckets.result()
        queue_url, queue_arn, dlq_url = queues.result()
    notifications = ensure_bucket_notification(settings, queue_arn)
    return Resources(queue_url, queue_arn, dlq_url, notifications)


if __name__ == "__main__":  # `python -m udagram.resources` (the compose file's one-off `resources` service)
    ensure_resources()
