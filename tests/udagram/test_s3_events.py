"""The S3 event bridge's translation of SeaweedFS filer events (pure, no servers).

The events are shaped like the ones SeaweedFS 4.48's filer webhook really POSTs (recorded on this
machine for a put, an overwrite, a tagging update and a multipart upload).
"""

from __future__ import annotations

import base64
import json
from urllib.parse import unquote_plus

import pytest

from udagram.stack.s3_events import s3_record
from workers.events import ImageTask, parse_body

BUCKET = "udagram-originals"
IMAGE_ID = "0123456789abcdef0123456789abcdef"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def entry(name: str, *, file_key: int = 3, size: int = 3, etag_hex: str = "f97c5d29941bfb1b2fdab0874906ab82",
          modified_ns: int = 1795802991697513526, extra: dict | None = None) -> dict:
    extended = {"Seaweed-X-Amz-ETag": b64(etag_hex), "Seaweed-X-Amz-Owner": b64("udagram")}
    extended.update(extra or {})
    return {
        "name": name,
        "chunks": [{"size": size, "modified_ts_ns": modified_ns, "e_tag": "+XxdKZQb+xsv2rCHSQargg==",
                    "fid": {"volume_id": 1, "file_key": file_key, "cookie": 906950904}}],
        "attributes": {"file_size": size, "mtime": modified_ns // 10**9, "file_mode": 432,
                       "mime": "image/jpeg", "md5": "+XxdKZQb+xsv2rCHSQargg=="},
        "extended": extended,
    }


def create(path: str, new: dict) -> dict:
    parent = path.rsplit("/", 1)[0]
    return {"event_type": "create", "key": path,
            "message": {"new_entry": new, "delete_chunks": True, "new_parent_path": parent}}


def translate(event: dict) -> dict | None:
    return s3_record(event, bucket=BUCKET, region="eu-west-1")


def test_new_object_becomes_an_s3_object_created_record() -> None:
    event = create(f"/buckets/{BUCKET}/originals/{IMAGE_ID}.jpg", entry(f"{IMAGE_ID}.jpg", size=1234))
    record = translate(event)
    assert record is not None
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["awsRegion"] == "eu-west-1"
    assert record["s3"]["bucket"] == {"name": BUCKET, "ownerIdentity": {"principalId": "udagram"},
                                      "arn": f"arn:aws:s3:::{BUCKET}"}
    obj = record["s3"]["object"]
    assert obj["key"] == f"originals/{IMAGE_ID}.jpg"
    assert obj["size"] == 1234
    assert obj["eTag"] == "f97c5d29941bfb1b2fdab0874906ab82"
    assert obj["sequencer"] == f"{1795802991697513526:016X}"
    assert record["eventTime"] == "2026-11-27T18:09:51.697Z"


def test_key_is_url_encoded_like_aws() -> None:
    record = translate(create(f"/buckets/{BUCKET}/originals/a b+c&é.jpg", entry("a b+c&é.jpg")))
    assert record is not None
    encoded = record["s3"]["object"]["key"]
    assert encoded == "originals/a+b%2Bc%26%C3%A9.jpg"
    assert unquote_plus(encoded) == "originals/a b+c&é.jpg"


def test_the_worker_parses_the_bridge_output_into_a_task() -> None:
    record = translate(create(f"/buckets/{BUCKET}/originals/{IMAGE_ID}.png", entry(f"{IMAGE_ID}.png", size=99)))
    items = parse_body(json.dumps({"Records": [record]}))
    assert items == [ImageTask(image_id=IMAGE_ID, source="s3", bucket=BUCKET, key=f"originals/{IMAGE_ID}.png",
                               size=99, etag="f97c5d29941bfb1b2fdab0874906ab82",
                               sequencer=f"{1795802991697513526:016X}")]


def test_overwrite_with_new_bytes_is_an_object_created() -> None:
    path = f"/buckets/{BUCKET}/originals/{IMAGE_ID}.jpg"
    old = entry(f"{IMAGE_ID}.jpg", file_key=3)
    new = entry(f"{IMAGE_ID}.jpg", file_key=4, size=4, etag_hex="54d7c9069d63f1fa5525dd789ab6ba98",
                modified_ns=1795802991704136258)
    event = {"event_type": "update", "key": path,
             "message": {"old_entry": old, "new_entry": new, "new_parent_path": path.rsplit("/", 1)[0]}}
    record = translate(event)
    assert record is not None and record["s3"]["object"]["eTag"] == "54d7c9069d63f1fa5525dd789ab6ba98"
    # sequencers order events for one key, as S3's do
    first = translate(create(path, old))
    assert first is not None and first["s3"]["object"]["sequencer"] < record["s3"]["object"]["sequencer"]


def test_metadata_only_update_sends_nothing() -> None:
    path = f"/buckets/{BUCKET}/originals/{IMAGE_ID}.jpg"
    old = entry(f"{IMAGE_ID}.jpg")
    tagged = entry(f"{IMAGE_ID}.jpg", extra={"X-Amz-Tagging-a": b64("b")})
    event = {"event_type": "update", "key": path,
             "message": {"old_entry": old, "new_entry": tagged, "new_parent_path": path.rsplit("/", 1)[0]}}
    assert translate(event) is None


def test_multipart_completion_is_named_like_aws() -> None:
    new = entry(f"{IMAGE_ID}.jpg", size=5242980, etag_hex="b80965183800174acbfed42ed19781c2-2",
                extra={"X-Seaweedfs-Upload-Id": b64("b19e9d4e_c11b0f83")})
    record = translate(create(f"/buckets/{BUCKET}/originals/{IMAGE_ID}.jpg", new))
    assert record is not None
    assert record["eventName"] == "ObjectCreated:CompleteMultipartUpload"
    assert record["s3"]["object"]["eTag"] == "b80965183800174acbfed42ed19781c2-2"


def test_rename_into_place_uses_the_new_path() -> None:
    event = {"event_type": "rename", "key": f"/buckets/{BUCKET}/tmp/x.jpg",
             "message": {"old_entry": entry("x.jpg"), "new_entry": entry(f"{IMAGE_ID}.jpg"),
                         "new_parent_path": f"/buckets/{BUCKET}/originals"}}
    record = translate(event)
    assert record is not None and record["s3"]["object"]["key"] == f"originals/{IMAGE_ID}.jpg"


def test_md5_is_the_etag_when_seaweedfs_kept_none() -> None:
    new = entry(f"{IMAGE_ID}.jpg")
    del new["extended"]["Seaweed-X-Amz-ETag"]
    record = translate(create(f"/buckets/{BUCKET}/originals/{IMAGE_ID}.jpg", new))
    assert record is not None
    assert record["s3"]["object"]["eTag"] == base64.b64decode("+XxdKZQb+xsv2rCHSQargg==").hex()


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(create(f"/buckets/{BUCKET}/originals", {"name": "originals", "is_directory": True,
                                                           "attributes": {}}), id="directory"),
        pytest.param(create(f"/buckets/udagram-processed/originals/{IMAGE_ID}.jpg", entry(f"{IMAGE_ID}.jpg")),
                     id="other-bucket"),
        pytest.param(create(f"/buckets/{BUCKET}/processed/{IMAGE_ID}.jpg", entry(f"{IMAGE_ID}.jpg")),
                     id="outside-the-uploads-prefix"),
        pytest.param(create(f"/buckets/{BUCKET}/.uploads/abc/0001_x.part", entry("0001_x.part")),
                     id="multipart-part"),
        pytest.param(create("/buckets/.system/owners/.complete", entry(".complete")), id="seaweedfs-internal"),
        pytest.param({"event_type": "delete", "key": f"/buckets/{BUCKET}/originals/{IMAGE_ID}.jpg",
                      "message": {"old_entry": entry(f"{IMAGE_ID}.jpg")}}, id="delete"),
        pytest.param({"event_type": "create"}, id="no-message"),
        pytest.param({}, id="empty"),
    ],
)
def test_events_s3_would_not_notify_send_nothing(event: dict) -> None:
    assert translate(event) is None


@pytest.mark.aws
def test_bridge_recreates_a_missing_queue_and_delivers(aws_settings) -> None:
    """The local queue server restarted empty: the event still reaches a (re-created) queue."""
    from udagram.aws import client
    from udagram.stack.s3_events import Bridge

    sqs = client("sqs", aws_settings)
    bridge = Bridge(aws_settings, sqs)
    bridge.queue_url()  # cached before the loss, as in a running bridge
    for name in (aws_settings.queue_name, aws_settings.dead_letter_queue_name):
        sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
    event = create(f"/buckets/{aws_settings.originals_bucket}/originals/{IMAGE_ID}.jpg",
                   entry(f"{IMAGE_ID}.jpg"))
    assert bridge.handle(event) is not None
    url = sqs.get_queue_url(QueueName=aws_settings.queue_name)["QueueUrl"]
    messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2).get("Messages", [])
    [task] = parse_body(messages[0]["Body"])
    assert task.image_id == IMAGE_ID
