import json

import pytest

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


def s3_record(**object_fields) -> dict:
    obj = {"key": f"originals/{ID}.jpg", "size": 1234, "eTag": "\"abc\"", "sequencer": "0055AED6DCD90281E5"}
    obj.update(object_fields)
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "originals"}, "object": obj}}


def only_garbage(record: dict) -> str:
    items = parse_body(json.dumps({"Records": [record]}))
    assert len(items) == 1 and isinstance(items[0], Garbage), items
    return items[0].reason


@pytest.mark.parametrize("field,value,phrase", [
    ("key", 12345, "s3.object.key is int 12345, not str"),
    ("key", ["originals/x.jpg"], "s3.object.key is list"),
    ("key", "", "must not be empty"),
    ("eTag", 12345, "s3.object.eTag is int 12345, not str"),
    ("eTag", {"md5": "abc"}, "s3.object.eTag is dict"),
    ("size", 12.5, "s3.object.size is float 12.5, not int"),
    ("size", 1234.0, "s3.object.size is float 1234.0, not int"),
    ("size", -1, "s3.object.size is negative (-1)"),
    ("size", "1234", "s3.object.size is str '1234', not int"),
    ("size", True, "s3.object.size is bool True, not int"),
    ("size", [1234], "s3.object.size is list [1234], not int"),
    ("sequencer", 55, "s3.object.sequencer is int 55, not str"),
])
def test_s3_record_fields_of_the_wrong_type_are_garbage_with_the_field_named(field, value, phrase):
    reason = only_garbage(s3_record(**{field: value}))
    assert phrase in reason, reason


@pytest.mark.parametrize("mutate,phrase", [
    (lambda r: r["s3"]["bucket"].update(name=7), "s3.bucket.name is int 7, not str"),
    (lambda r: r["s3"].update(bucket="originals"), "s3.bucket is str, not an object"),
    (lambda r: r["s3"].update(object=[1, 2]), "s3.object is list, not an object"),
    (lambda r: r.update(s3="x"), "s3 is str, not an object"),
    (lambda r: r.update(eventName=1), "eventName is int 1, not str"),
    (lambda r: r.pop("eventName"), "eventName is missing"),
])
def test_s3_record_envelopes_of_the_wrong_type_are_garbage(mutate, phrase):
    record = s3_record()
    mutate(record)
    reason = only_garbage(record)
    assert phrase in reason, reason


def test_well_typed_optional_fields_may_be_absent():
    record = s3_record()
    for name in ("size", "eTag", "sequencer"):
        del record["s3"]["object"][name]
    [task] = parse_body(json.dumps({"Records": [record]}))
    assert task == ImageTask(image_id=ID, source="s3", bucket="originals", key=f"originals/{ID}.jpg")
    assert parse_body(json.dumps({"Records": [s3_record(size=0)]}))[0].size == 0


@pytest.mark.parametrize("fields,phrase", [
    ({"modelVersion": 2}, "modelVersion is int 2, not str"),
    ({"modelVersion": "../../models"}, "is not a version"),
    ({"modelVersion": "1.0/x"}, "is not a version"),
    ({"pendingOnly": "yes"}, "pendingOnly is str 'yes', not bool"),
    ({"imageId": 42}, "invalid imageId 42"),
])
def test_rerun_records_with_odd_fields_are_garbage(fields, phrase):
    record = dict(jobs.reprocess_record(ID), **fields)
    reason = only_garbage(record)
    assert phrase in reason, reason


def test_deeply_nested_json_is_garbage_not_an_exception():
    [item] = parse_body("[" * 100_000 + "]" * 100_000)
    assert isinstance(item, Garbage) and "not JSON" in item.reason
