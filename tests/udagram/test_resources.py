"""resources.ensure_resources against a moto server subprocess (and SeaweedFS for S3)."""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

from udagram import data, resources
from udagram.aws import client


def test_ensure_resources_is_idempotent_and_wires_s3_events_to_the_queue(aws_settings):
    again = resources.ensure_resources(aws_settings)  # second run: no error, same queue
    assert again.bucket_notifications is True
    assert data.GroupModel.exists() and data.ImageModel.exists()

    sqs = client("sqs", aws_settings)
    attrs = sqs.get_queue_attributes(QueueUrl=again.queue_url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == aws_settings.queue_max_receive_count
    assert redrive["deadLetterTargetArn"].endswith(aws_settings.dead_letter_queue_name)
    policy = json.loads(attrs["Policy"])
    assert policy["Statement"][0]["Principal"] == {"Service": "s3.amazonaws.com"}

    s3 = client("s3", aws_settings)
    s3.put_object(Bucket=aws_settings.originals_bucket, Key="originals/" + "a" * 32 + ".jpg", Body=b"x")
    keys = []
    for _ in range(5):
        for message in sqs.receive_message(QueueUrl=again.queue_url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1).get("Messages", []):
            for record in json.loads(message["Body"]).get("Records", []):
                if record.get("eventName", "").startswith("ObjectCreated"):
                    keys.append(unquote_plus(record["s3"]["object"]["key"]))  # S3 URL-encodes keys
        if keys:
            break
    assert keys == ["originals/" + "a" * 32 + ".jpg"]


def test_ensure_resources_on_seaweedfs_skips_notifications(aws_settings, seaweedfs):
    settings = aws_settings.model_copy(update={"s3_endpoint_url": seaweedfs})
    result = resources.ensure_resources(settings)
    assert result.bucket_notifications is False
    names = {b["Name"] for b in client("s3", settings).list_buckets()["Buckets"]}
    assert {settings.originals_bucket, settings.processed_bucket} <= names


def test_only_the_web_page_may_post_to_the_originals_bucket(aws_settings):
    """CORS: the page's origin (and its localhost twin) may POST uploads; nothing else, from nowhere
    else. The processed bucket's rule matches no browser (SeaweedFS would otherwise apply its
    global list to it)."""
    s3 = client("s3", aws_settings)
    page = aws_settings.public_url
    assert s3.get_bucket_cors(Bucket=aws_settings.originals_bucket)["CORSRules"] == [{
        "AllowedOrigins": [page, page.replace("127.0.0.1", "localhost")], "AllowedMethods": ["POST"],
        "AllowedHeaders": ["Content-Type"], "MaxAgeSeconds": 3600}]
    processed = s3.get_bucket_cors(Bucket=aws_settings.processed_bucket)["CORSRules"]
    assert [rule["AllowedOrigins"] for rule in processed] == [[resources.NO_BROWSER_ORIGIN]]
    assert "/" in resources.NO_BROWSER_ORIGIN.removeprefix("http://")  # an Origin header never has a path


def test_only_the_admin_identity_creates_buckets_locally(aws_settings):
    """The API and the worker start with identities that may not create buckets: `ensure_resources`
    leaves the buckets to `udagram up` (admin) and still creates what is theirs (tables, queues)."""
    fresh = aws_settings.model_copy(update={"originals_bucket": aws_settings.originals_bucket + "-new",
                                            "processed_bucket": aws_settings.processed_bucket + "-new"})
    for identity in ("api", "worker"):
        result = resources.ensure_resources(fresh.model_copy(update={"local_identity": identity}))
        assert result.queue_url
    names = {b["Name"] for b in client("s3", aws_settings).list_buckets()["Buckets"]}
    assert fresh.originals_bucket not in names and fresh.processed_bucket not in names
    resources.ensure_resources(fresh)  # admin (the default)
    names = {b["Name"] for b in client("s3", aws_settings).list_buckets()["Buckets"]}
    assert {fresh.originals_bucket, fresh.processed_bucket} <= names
