import json

from udagram import jobs
from workers.events import Garbage, Ignored, ImageTask, parse_body

ID = "0123456789abcdef0123456789abcdef"


def s3_body(key: str, name: str = "ObjectCreated:Put") -> str:
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
        "s3": {"bucket": {"name": "originals"},
               "object": {"key": key, "size": 1234, "eTag": "\"abc\"", "sequencer": "0055AED6DCD90281E5"}},
    }]})


def test_s3_record_key_is_url_decoded():
    [task] = parse_body(s3_body(f"originals%2F{ID}.jpg"))
    assert task == ImageTask(image_id=ID, source="s3", bucket="originals", key=f"originals/{ID}.jpg",
                             size=1234, etag="abc", sequencer="0055AED6DCD90281E5")


def test_test_event_is_ignored():
    [item] = parse_body(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}))
    assert isinstance(item, Ignored) and "TestEvent" in item.reason


def test_foreign_keys_and_removals_are_ignored():
    assert isinstance(parse_body(s3_body("somewhere/else+with+spaces.jpg"))[0], Ignored)
    assert isinstance(parse_body(s3_body(f"processed/{ID}.jpg"))[0], Ignored)
    assert isinstance(parse_body(s3_body(f"originals/{ID}.jpg", "ObjectRemoved:Delete"))[0], Ignored)


def test_reprocess_record_round_trips_from_jobs():
    body = json.dumps({"Records": [jobs.reprocess_record(ID, "2.0")]})
    assert parse_body(body) == [ImageTask(image_id=ID, source="reprocess", model_version="2.0")]


def test_garbage():
    for body in ["not json", "[]", "{}", json.dumps({"Records": [{"eventSource": "x"}]}),
                 json.dumps({"Records": [{"eventSource": jobs.REPROCESS_SOURCE, "imageId": "../x"}]}),
                 json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]})]:
        items = parse_body(body)
        assert len(items) == 1 and isinstance(items[0], Garbage), body


def test_several_records_in_one_body():
    other = "f" * 32
    body = json.loads(s3_body(f"originals/{ID}.png"))
    body["Records"].append(jobs.reprocess_record(other))
    items = parse_body(json.dumps(body))
    assert [i.image_id for i in items] == [ID, other]


def test_reconciliation_rerun_is_pending_only():
    body = json.dumps({"Records": [jobs.reprocess_record(ID, pending_only=True)]})
    assert parse_body(body) == [ImageTask(image_id=ID, source="reprocess", pending_only=True)]
