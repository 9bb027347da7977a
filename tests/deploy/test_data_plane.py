"""Buckets, queues and tables in the synthesized template against the app itself: the PynamoDB
models (udagram/data.py), the settings (udagram/settings.py) and what `udagram.resources` creates
locally (its boto3 calls are recorded and compared with the template)."""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
from typing import Any

import pytest
from botocore.exceptions import ClientError

from udagram import data, resources
from udagram.settings import Settings

DEFAULTS = Settings.model_construct()
AWS_MODELS = data.models_for(Settings.model_construct(mode="aws"))  # the built-in sign-in's are local only


class Recorder:
    """A boto3 client stand-in that records the calls `udagram.resources` makes (no AWS)."""

    def __init__(self, **answers: Any) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {}
        self.answers = answers

    def __getattr__(self, name: str):
        def call(**kwargs: Any) -> Any:
            self.calls.setdefault(name, []).append(kwargs)
            answer = self.answers.get(name, {})
            return answer(**kwargs) if callable(answer) else answer
        return call


def _missing_queue(**_: Any) -> Any:
    raise ClientError({"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue"}}, "GetQueueUrl")


def _only(resources_: dict[str, dict], what: str) -> dict[str, Any]:
    assert len(resources_) == 1, f"expected one {what}, found {list(resources_)}"
    return next(iter(resources_.values()))


def _bucket(synth, parameter: str) -> tuple[str, dict[str, Any]]:
    found = {k: r for k, r in synth.resources("AWS::S3::Bucket").items()
             if r["Properties"].get("BucketName") == {"Ref": parameter}}
    assert len(found) == 1, f"no bucket named by the {parameter} parameter"
    return next(iter(found.items()))


# ---- names: one source (the settings) -------------------------------------------------------------

NAMED = {  # parameter -> (settings field, resource type, property holding the name)
    "OriginalsBucket": ("originals_bucket", "AWS::S3::Bucket", "BucketName"),
    "ProcessedBucket": ("processed_bucket", "AWS::S3::Bucket", "BucketName"),
    "QueueName": ("queue_name", "AWS::SQS::Queue", "QueueName"),
    "DeadLetterQueueName": ("dead_letter_queue_name", "AWS::SQS::Queue", "QueueName"),
}


@pytest.mark.parametrize("parameter", sorted(NAMED))
def test_bucket_and_queue_names_default_to_the_settings(synth, parameter):
    field, type_, name_property = NAMED[parameter]
    assert synth.template["Parameters"][parameter]["Default"] == getattr(DEFAULTS, field)
    named = [r for r in synth.resources(type_).values() if r["Properties"].get(name_property) == {"Ref": parameter}]
    assert len(named) == 1
    # ...and the API and the worker are told the same name.
    for container in _app_containers(synth):
        assert {"Name": f"UDAGRAM_{field.upper()}", "Value": {"Ref": parameter}} in container["Environment"]


def _app_containers(synth) -> list[dict[str, Any]]:
    containers = [c for r in synth.resources("AWS::ECS::TaskDefinition").values()
                  for c in r["Properties"]["ContainerDefinitions"] if c["Name"] in ("api", "worker")]
    assert len(containers) == 2
    return containers


def test_services_use_aws_mode_and_create_no_resources(synth):
    for container in _app_containers(synth):
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["UDAGRAM_MODE"] == "aws"
        assert env["UDAGRAM_CREATE_RESOURCES"] == "false"
        assert Settings(create_resources=env["UDAGRAM_CREATE_RESOURCES"]).create_resources is False


# ---- DynamoDB: the template's tables are the models' ---------------------------------------------

def _declared_table_name(model) -> str:
    """Meta.table_name as written in udagram/data.py (other tests may have re-pointed the class)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(model)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "table_name" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{model.__name__} declares no Meta.table_name")


def _table_for(synth, model) -> dict[str, Any]:
    """The template's table whose name parameter defaults to the model's table name."""
    declared = _declared_table_name(model)
    found = [r for r in synth.resources("AWS::DynamoDB::Table").values()
             if synth.template["Parameters"][r["Properties"]["TableName"]["Ref"]]["Default"] == declared]
    assert len(found) == 1, f"{model.__name__}: expected one table named {declared!r}, found {len(found)}"
    return found[0]


def test_template_shape_with_cdk_assertions(template):
    from aws_cdk.assertions import Match

    template.resource_count_is("AWS::DynamoDB::Table", len(AWS_MODELS))  # one table per model it uses
    template.all_resources_properties("AWS::DynamoDB::Table", {"BillingMode": "PAY_PER_REQUEST"})
    template.all_resources_properties("AWS::S3::Bucket", Match.object_like({
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                           "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
        "BucketEncryption": Match.any_value()}))
    template.all_resources_properties("AWS::SQS::Queue", Match.object_like({"SqsManagedSseEnabled": True}))
    template.has_resource_properties("AWS::SQS::Queue", {
        "QueueName": {"Ref": "QueueName"},
        "VisibilityTimeout": DEFAULTS.worker_visibility_timeout_seconds,
        "RedrivePolicy": Match.object_like({"maxReceiveCount": DEFAULTS.queue_max_receive_count}),
        "SqsManagedSseEnabled": True})
    template.all_resources_properties("AWS::Logs::LogGroup", Match.object_like({"RetentionInDays": Match.any_value()}))


@pytest.mark.parametrize("model", AWS_MODELS, ids=lambda m: m.__name__)
def test_table_keys_indexes_and_projections_equal_the_model(synth, model):
    table = _table_for(synth, model)
    props = table["Properties"]
    schema = model._get_schema()
    def canonical(item: dict) -> str:  # the same order whatever order each side wrote the keys in
        return json.dumps(item, sort_keys=True)

    assert sorted(props["KeySchema"], key=canonical) == sorted(schema["key_schema"], key=canonical)
    assert sorted(props["AttributeDefinitions"], key=canonical) == sorted(schema["attribute_definitions"],
                                                                          key=canonical)

    def indexes(items, name_key, keys_key, projection_key):
        return {i[name_key]: (sorted(i[keys_key], key=canonical), i[projection_key]) for i in items}

    assert indexes(props.get("GlobalSecondaryIndexes", []), "IndexName", "KeySchema", "Projection") == \
        indexes(schema["global_secondary_indexes"], "index_name", "key_schema", "projection")
    assert indexes(props.get("LocalSecondaryIndexes", []), "IndexName", "KeySchema", "Projection") == \
        indexes(schema["local_secondary_indexes"], "index_name", "key_schema", "projection")
    ttl = model._ttl_attribute()
    if ttl is None:
        assert "TimeToLiveSpecification" not in props
    else:
        assert props["TimeToLiveSpecification"] == {"AttributeName": ttl.attr_name, "Enabled": True}
    # Named by its UDAGRAM_*_TABLE setting, on-demand like `data.ensure_tables`, recoverable, kept.
    parameter = props["TableName"]["Ref"]
    field = re.sub(r"(?<!^)([A-Z])", r"_\1", parameter).lower()  # ImagesTable -> images_table
    assert getattr(DEFAULTS, field) == _declared_table_name(model)
    for container in _app_containers(synth):
        assert {"Name": f"UDAGRAM_{field.upper()}", "Value": {"Ref": parameter}} in container["Environment"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["DeletionPolicy"] == "Retain"


def test_table_spec_reads_ttl_local_indexes_and_projections():
    """The derivation covers what today's models don't use yet (a TTL attribute, an LSI, INCLUDE)."""
    from infra.tables import Key, table_spec
    from pynamodb.attributes import NumberAttribute, TTLAttribute, UnicodeAttribute
    from pynamodb.indexes import IncludeProjection, KeysOnlyProjection, LocalSecondaryIndex
    from pynamodb.models import Model

    class ByTime(LocalSecondaryIndex):
        class Meta:
            index_name = "by_time"
            projection = IncludeProjection(["hits"])

        key = UnicodeAttribute(hash_key=True)
        at = NumberAttribute(range_key=True)

    class RateLimit(Model):
        class Meta:
            table_name = "rate-limits"

        key = UnicodeAttribute(hash_key=True)
        window = NumberAttribute(range_key=True)
        at = NumberAttribute()
        hits = NumberAttribute()
        expires = TTLAttribute()
        by_time = ByTime()

    spec = table_spec(RateLimit, "rate_limit_table")
    assert (spec.hash_key, spec.range_key) == (Key("key", "S"), Key("window", "N"))
    assert spec.ttl_attribute == "expires"
    (index,) = spec.indexes
    assert (index.name, index.local, index.projection, index.non_key_attributes) == ("by_time", True, "INCLUDE",
                                                                                     ("hits",))
    assert (index.hash_key, index.range_key) == (Key("key", "S"), Key("at", "N"))
    assert KeysOnlyProjection().projection_type == "KEYS_ONLY"  # the third projection the stack maps


# ---- S3 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("parameter", ["OriginalsBucket", "ProcessedBucket"])
def test_buckets_private_encrypted_ssl_only_and_retained(synth, parameter):
    logical_id, bucket = _bucket(synth, parameter)
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] \
        == {"SSEAlgorithm": "AES256"}
    assert bucket["DeletionPolicy"] == "Retain"
    assert "LoggingConfiguration" in props
    policy = _only({k: r for k, r in synth.resources("AWS::S3::BucketPolicy").items()
                    if r["Properties"]["Bucket"] == {"Ref": logical_id}}, "bucket policy")
    deny = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny[0]["Principal"] == {"AWS": "*"}


@pytest.mark.parametrize("parameter", ["OriginalsBucket", "ProcessedBucket"])
def test_abandoned_uploads_are_aborted(synth, parameter):
    rules = _bucket(synth, parameter)[1]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any(r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") == 1
               and r["Status"] == "Enabled" and "Prefix" not in r for r in rules)


def test_originals_cors_is_the_local_rule_for_the_page_origin_only(synth):
    props = _bucket(synth, "OriginalsBucket")[1]["Properties"]
    (rule,) = props["CorsConfiguration"]["CorsRules"]
    assert rule["AllowedOrigins"] == [{"Ref": "PublicUrl"}]
    s3 = Recorder()
    resources.ensure_buckets(DEFAULTS.model_copy(update={"public_url": "https://photos.example.com"}), s3=s3)
    (local,) = s3.calls["put_bucket_cors"][0]["CORSConfiguration"]["CORSRules"]
    assert local["AllowedOrigins"] == ["https://photos.example.com"]
    assert sorted(rule["AllowedMethods"]) == sorted(local["AllowedMethods"])
    assert rule["AllowedHeaders"] == local["AllowedHeaders"]
    assert rule.get("ExposedHeaders") == local.get("ExposeHeaders")
    assert rule["MaxAge"] == local["MaxAgeSeconds"]
    assert "CorsConfiguration" not in _bucket(synth, "ProcessedBucket")[1]["Properties"]


def test_page_origin_parameter_requires_an_https_origin(synth):
    import re

    pattern = synth.template["Parameters"]["PublicUrl"]["AllowedPattern"]
    assert re.fullmatch(pattern, "https://photos.example.com")
    assert not re.fullmatch(pattern, "*") and not re.fullmatch(pattern, "http://photos.example.com")


def test_uploads_notify_the_queue_as_the_app_configures_it(synth):
    notification = _only(synth.resources("Custom::S3BucketNotifications"), "bucket notification")
    props = notification["Properties"]
    originals_id = _bucket(synth, "OriginalsBucket")[0]
    assert props["BucketName"] == {"Ref": originals_id}
    (config,) = props["NotificationConfiguration"]["QueueConfigurations"]
    queue_id = _queue(synth, "QueueName")[0]
    assert config["QueueArn"] == {"Fn::GetAtt": [queue_id, "Arn"]}
    s3 = Recorder()
    resources.ensure_bucket_notification(DEFAULTS.model_copy(update={"mode": "aws"}), "arn:queue", s3=s3)
    (local,) = s3.calls["put_bucket_notification_configuration"][0]["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Events"] == local["Events"] == ["s3:ObjectCreated:*"]
    assert config["Filter"] == local["Filter"]
    assert config["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "originals/"}]
    # S3 may send to the queue only on behalf of the originals bucket.
    policy = _only({k: r for k, r in synth.resources("AWS::SQS::QueuePolicy").items()
                    if {"Ref": queue_id} in r["Properties"]["Queues"]}, "queue policy")
    (allow,) = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert allow["Condition"] == {"ArnLike": {"aws:SourceArn": {"Fn::GetAtt": [originals_id, "Arn"]}}}


# ---- SQS ------------------------------------------------------------------------------------------

def _queue(synth, parameter: str) -> tuple[str, dict[str, Any]]:
    found = {k: r for k, r in synth.resources("AWS::SQS::Queue").items()
             if r["Properties"]["QueueName"] == {"Ref": parameter}}
    assert len(found) == 1
    return next(iter(found.items()))


def _local_queue_attributes() -> dict[str, dict[str, str]]:
    """The attributes `udagram.resources.ensure_queues` creates the two queues with, by name."""
    sqs = Recorder(get_queue_url=_missing_queue,
                   create_queue=lambda QueueName, **_: {"QueueUrl": f"https://sqs/{QueueName}"},
                   get_queue_attributes=lambda QueueUrl, **_: {"Attributes": {"QueueArn": f"arn:{QueueUrl}"}})
    resources.ensure_queues(DEFAULTS, sqs=sqs)
    return {c["QueueName"]: c["Attributes"] for c in sqs.calls["create_queue"]}


def test_queue_visibility_redrive_and_dlq_retention_equal_the_local_queues(synth):
    local = _local_queue_attributes()
    dlq_id, dlq = _queue(synth, "DeadLetterQueueName")
    _, queue = _queue(synth, "QueueName")
    queue_local = local[DEFAULTS.queue_name]
    assert queue["Properties"]["VisibilityTimeout"] == int(queue_local["VisibilityTimeout"])
    redrive = json.loads(queue_local["RedrivePolicy"])
    assert queue["Properties"]["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]},
                                                    "maxReceiveCount": int(redrive["maxReceiveCount"])}
    assert dlq["Properties"]["MessageRetentionPeriod"] == \
        int(local[DEFAULTS.dead_letter_queue_name]["MessageRetentionPeriod"])


def test_visibility_timeout_outlasts_the_worker_heartbeat_and_equals_its_lease(synth):
    timeout = _queue(synth, "QueueName")[1]["Properties"]["VisibilityTimeout"]
    assert timeout == DEFAULTS.worker_visibility_timeout_seconds  # the lease the worker takes
    # The consumer extends visibility every heartbeat: the queue's own timeout must cover the gap
    # from receive to the first beat with room for missed beats.
    heartbeat = max(1.0, DEFAULTS.worker_visibility_timeout_seconds / 3)  # workers/consumer.py
    assert timeout >= 2 * heartbeat
    worker = next(c for c in _app_containers(synth) if c["Name"] == "worker")
    env = {e["Name"]: e["Value"] for e in worker["Environment"]}
    assert int(env["UDAGRAM_WORKER_VISIBILITY_TIMEOUT_SECONDS"]) == timeout
    assert int(env["UDAGRAM_QUEUE_MAX_RECEIVE_COUNT"]) == queue_max_receive_count(synth)


def queue_max_receive_count(synth) -> int:
    return _queue(synth, "QueueName")[1]["Properties"]["RedrivePolicy"]["maxReceiveCount"]


@pytest.mark.parametrize("parameter", ["QueueName", "DeadLetterQueueName"])
def test_queues_encrypted_and_ssl_only(synth, parameter):
    queue_id, queue = _queue(synth, parameter)
    assert queue["Properties"]["SqsManagedSseEnabled"] is True
    policy = _only({k: r for k, r in synth.resources("AWS::SQS::QueuePolicy").items()
                    if {"Ref": queue_id} in r["Properties"]["Queues"]}, "queue policy")
    deny = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
