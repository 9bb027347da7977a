"""The real local stack (the `local_stack` fixture runs `udagram up`'s code on free ports):
health of every process, S3 upload events reaching the queue in S3's shape, an upload
becoming DONE, and data surviving `down` + `up`. The restart test comes last in this module."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote_plus
from uuid import uuid4

import httpx
import pytest

from tests.fixtures.stack import LocalStack
from udagram.aws import client
from udagram.stack import control, supervisor

pytestmark = pytest.mark.aws

UDAGRAM = str(Path(sys.executable).parent / "udagram")
EVERY_PROGRAM = {"s3", "sqs", "dynamodb", "s3-events", "torchserve", "api", "worker"}

CREATE_GROUP = """
mutation($input: CreateGroupInput!) {
  createGroup(input: $input) { __typename ... on Group { id name owner } ... on Error { code message } }
}"""
CREATE_IMAGE = """
mutation($input: CreateImageInput!) {
  createImage(input: $input) {
    __typename
    ... on ImageUpload { image { id status } upload { url fields } }
    ... on Error { code message }
  }
}"""
GROUP = "query($id: ID!) { group(id: $id) { id name owner imageCount } }"
IMAGE = "query($id: ID!) { image(id: $id) { id status title error predictions { label probability } } }"


def chelsea_jpeg() -> bytes:
    import io

    from PIL import Image
    from skimage import data as samples

    buffer = io.BytesIO()
    Image.fromarray(samples.chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def create_group(stack: LocalStack, token: str, name: str) -> dict:
    group = stack.graphql(CREATE_GROUP, {"input": {"name": name, "description": "test"}}, token)["createGroup"]
    assert group["__typename"] == "Group", group
    return group


def upload_image(stack: LocalStack, token: str, group_id: str, body: bytes) -> str:
    variables = {"input": {"groupId": group_id, "caption": "chelsea", "contentType": "image/jpeg",
                           "contentLength": len(body)}}
    created = stack.graphql(CREATE_IMAGE, variables, token)["createImage"]
    assert created["__typename"] == "ImageUpload", created
    upload = created["upload"]
    response = httpx.post(upload["url"], data=upload["fields"], files={"file": ("chelsea.jpg", body, "image/jpeg")},
                          timeout=30)
    assert response.status_code in (200, 201, 204), response.text
    return created["image"]["id"]


def wait_for_status(stack: LocalStack, image_id: str, wanted: set[str], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    image = None
    while time.monotonic() < deadline:
        image = stack.graphql(IMAGE, {"id": image_id})["image"]
        if image and image["status"] in wanted:
            return image
        time.sleep(0.5)
    raise AssertionError(f"image {image_id} not {wanted} after {timeout}s: {image}\n"
                         f"worker log:\n{supervisor.tail(supervisor.paths(stack.settings).log('worker'))}")


def assert_status_command_shows_healthy(stack: LocalStack, names: set[str]) -> None:
    """`udagram status`, from a shell with the stack's environment, exits 0 and shows each of
    `names` RUNNING and healthy."""
    result = subprocess.run([UDAGRAM, "status"], env=stack.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in names:
        assert any(line.split()[:2] == [name, "RUNNING"] and line.endswith("healthy")
                   for line in result.stdout.splitlines()), result.stdout


def test_every_process_runs_and_is_healthy(local_stack: LocalStack) -> None:
    found = control.status(local_stack.settings)
    assert found is not None
    assert {s.name for s in found} == EVERY_PROGRAM
    assert [s for s in found if not s.ok] == []
    assert_status_command_shows_healthy(local_stack, EVERY_PROGRAM)


def test_up_again_is_a_no_op_that_reports_healthy(local_stack: LocalStack) -> None:
    before = {s.name: s.pid for s in control.status(local_stack.settings) or []}
    result = subprocess.run([UDAGRAM, "up"], env=local_stack.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stderr and local_stack.urls["web page"] in result.stdout
    assert {s.name: s.pid for s in control.status(local_stack.settings) or []} == before


def test_an_upload_sends_an_s3_shaped_event_to_the_queue(local_stack: LocalStack) -> None:
    """With the worker stopped, the message the bridge queued for a new original is read back."""
    settings = local_stack.settings
    proxy = supervisor.rpc(supervisor.paths(settings))
    proxy.supervisor.stopProcess("worker", True)
    # A long poll the worker left open in the SQS server would still take (and hide) the message.
    time.sleep(settings.worker_poll_seconds + 1)
    try:
        sqs = client("sqs", settings)
        queue_url = sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
        key = f"originals/{uuid4().hex}.jpg"
        body = b"\xff\xd8 not really a jpeg"
        put = client("s3", settings).put_object(Bucket=settings.originals_bucket, Key=key, Body=body)
        record = None
        deadline = time.monotonic() + 60
        while record is None and time.monotonic() < deadline:
            for message in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2,
                                               MaxNumberOfMessages=10).get("Messages", []):
                records = json.loads(message["Body"]).get("Records", [])
                if records and unquote_plus(records[0].get("s3", {}).get("object", {}).get("key", "")) == key:
                    record = records[0]
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        logs = supervisor.paths(settings)
        assert record is not None, (
            "no S3 event for the upload reached the queue\nbridge log:\n"
            f"{supervisor.tail(logs.log('s3-events'))}\nSeaweedFS log:\n{supervisor.tail(logs.log('s3'))}"
        )
        assert record["eventSource"] == "aws:s3" and record["eventName"] == "ObjectCreated:Put"
        assert record["awsRegion"] == settings.aws_region
        assert record["s3"]["bucket"]["name"] == settings.originals_bucket
        assert record["s3"]["object"]["size"] == len(body)
        assert record["s3"]["object"]["eTag"] == put["ETag"].strip('"')
        assert record["s3"]["object"]["sequencer"]
    finally:
        proxy.supervisor.startProcess("worker", True)


def test_an_upload_through_the_api_becomes_done(local_stack: LocalStack) -> None:
    token = local_stack.token("stack-tester")
    group = create_group(local_stack, token, "Cats")
    image_id = upload_image(local_stack, token, group["id"], chelsea_jpeg())
    image = wait_for_status(local_stack, image_id, {"DONE", "FAILED"})
    assert image["status"] == "DONE", image
    assert len(image["predictions"]) == 5
    assert image["title"].startswith(image["predictions"][0]["label"])


def test_data_survives_down_and_up(local_stack: LocalStack) -> None:
    settings = local_stack.settings
    token = local_stack.token("persistent")
    group = create_group(local_stack, token, "Kept across restarts")
    image_id = upload_image(local_stack, token, group["id"], chelsea_jpeg())
    done = wait_for_status(local_stack, image_id, {"DONE", "FAILED"})
    s3 = client("s3", settings)
    s3.put_object(Bucket=settings.processed_bucket, Key="persistence-check.txt", Body=b"still here")
    originals = {o["Key"] for o in s3.list_objects_v2(Bucket=settings.originals_bucket).get("Contents", [])}
    processed = {o["Key"] for o in s3.list_objects_v2(Bucket=settings.processed_bucket).get("Contents", [])}

    local_stack.down()
    assert supervisor.running_pid(supervisor.paths(settings)) is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{local_stack.api_url}/healthz", timeout=2)
    local_stack.up()

    assert local_stack.graphql(GROUP, {"id": group["id"]})["group"] == {
        "id": group["id"], "name": "Kept across restarts", "owner": "persistent", "imageCount": 1}
    assert local_stack.graphql(IMAGE, {"id": image_id})["image"] == done
    s3 = client("s3", settings)
    assert s3.get_object(Bucket=settings.processed_bucket, Key="persistence-check.txt")["Body"].read() == b"still here"
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=settings.originals_bucket).get("Contents", [])} >= originals
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=settings.processed_bucket).get("Contents", [])} >= processed


def test_down_cleans_up_after_supervisord_was_killed(local_stack: LocalStack) -> None:
    """supervisord killed -9 leaves its programs orphaned: `down` still finds and stops them all,
    and `up` afterwards starts cleanly on the same ports."""
    import os
    import signal

    settings = local_stack.settings
    pid = supervisor.running_pid(supervisor.paths(settings))
    assert pid is not None
    tree = control.process_tree(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while supervisor.running_pid(supervisor.paths(settings)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = control.survivors(tree)
    assert orphans, "the programs should outlive a killed supervisord"
    assert set(orphans) <= set(control.marked(settings.data_dir))
    # up refuses, naming the ports and the way out
    with pytest.raises(control.PortInUse, match="udagram down"):
        control.up(settings, env=local_stack.env)

    result = subprocess.run([UDAGRAM, "down"], env=local_stack.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert control.survivors(tree) == [] and control.marked(settings.data_dir) == []
    local_stack.up()
    assert all(s.ok for s in control.status(settings) or [])
