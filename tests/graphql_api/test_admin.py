"""The admin's API: only the `admin` role; counts, failed images, retries and paced bulk re-runs
(jobs fed by each API process's feeder), against the moto server (DynamoDB and SQS over HTTP).
The worker is played by `_work`, which takes re-runs off the queue and writes their result."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

import pytest
from starlette.testclient import TestClient

from graphql_api.admin.feeder import Feeder
from graphql_api.app import create_app
from graphql_api.auth import ADMIN_ROLE, issue_token
from tests.graphql_api.conftest import Api
from udagram import data, jobs
from udagram.aws import client
from udagram.data import ImageModel, ImageStatus, JobModel

ERROR = "... on Error { code message }"
STATS = f"""{{ adminStats {{ __typename ... on AdminStats {{ counts {{ status count }} currentModelVersion
  modelVersions {{ modelVersion count }} runningJobs {{ id }} }} {ERROR} }} }}"""
FAILED = f"""query($first: Int, $after: String) {{ failedImages(first: $first, after: $after) {{ __typename
  ... on ImageConnection {{ edges {{ node {{ id error status }} cursor }} pageInfo {{ hasNextPage endCursor }} }}
  {ERROR} }} }}"""
JOB_FIELDS = "id kind state total queued finished modelVersion createdBy"
RETRY_FAILED = f"mutation {{ retryFailed {{ __typename ... on AdminJob {{ {JOB_FIELDS} }} {ERROR} }} }}"
RERUN = f"""mutation($v: String) {{ rerunOlderModel(version: $v) {{ __typename ... on AdminJob {{ {JOB_FIELDS} }}
  ... on InvalidInput {{ field }} {ERROR} }} }}"""
RETRY_IMAGE = (f"mutation($id: ID!) {{ retryImage(id: $id) {{ __typename ... on Image {{ id status error }}"
               f" {ERROR} }} }}")
JOB = f"query($id: ID!) {{ adminJob(id: $id) {{ __typename ... on AdminJob {{ {JOB_FIELDS} }} {ERROR} }} }}"


def _admin_token(settings, user: str = "root") -> str:
    return issue_token(user, settings, roles=(ADMIN_ROLE,))


def _images(n: int, status: ImageStatus, *, owner: str = "bob", error: str | None = None,
            model_version: str | None = None, group_id: str | None = None, age_seconds: float = 60) -> list[str]:
    """n image records as the worker leaves them, their status changed `age_seconds` ago (in order)."""
    group_id = group_id or data.new_id()
    ids = []
    with ImageModel.batch_write() as batch:
        for i in range(n):
            image_id = data.new_id()
            moment = data.utcnow() - timedelta(seconds=age_seconds - i * 0.001)
            batch.save(ImageModel(
                id=image_id, group_id=group_id, created_key=data.created_key(moment, image_id), owner=owner,
                status=status.value, status_changed_at=data.sortable_time(moment), content_type="image/jpeg",
                content_length=10, original_key=f"originals/{image_id}.jpg", created_at=moment, error=error,
                model_version=model_version, processed_at=moment if model_version else None))
            ids.append(image_id)
    return ids


def _queue(settings):
    sqs = client("sqs", settings)
    return sqs, jobs.queue_url(settings, sqs)


def _work(settings, limit: int = 10, fail: set[str] = frozenset()) -> list[dict]:
    """The worker's part: up to `limit` messages off the queue; each re-run's image DONE (or FAILED
    again if in `fail`) with the version it was re-run through; returns the re-run records."""
    sqs, url = _queue(settings)
    records, taken = [], 0
    while taken < limit:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, limit - taken), WaitTimeSeconds=0)
        if not got.get("Messages"):
            break
        for message in got["Messages"]:
            taken += 1
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            record = (json.loads(message["Body"]).get("Records") or [{}])[0]
            if record.get("eventSource") != jobs.REPROCESS_SOURCE:
                continue  # an upload (or S3's test event): not this test's business
            records.append(record)
            image_id = record["imageId"]
            status = ImageStatus.FAILED if image_id in fail else ImageStatus.DONE
            version = f"{settings.model_name} {record.get('modelVersion') or settings.model_default_version}"
            ImageModel(image_id).update(actions=[
                ImageModel.status.set(status.value), ImageModel.status_changed_at.set(data.sortable_time()),
                ImageModel.model_version.set(version)])
    return records


@pytest.fixture
def admin_api(aws_settings):
    """The API without its background feeder: the tests feed with their own, step by step."""
    with _without_feeder(aws_settings) as test_client:
        yield Api(test_client, aws_settings)


@contextmanager
def _without_feeder(settings):
    with TestClient(create_app(settings)) as test_client:
        test_client.portal.call(test_client.app.state.udagram.feeder.stop)
        yield test_client


# --- who may ------------------------------------------------------------------------------------

ADMIN_CALLS = [
    (STATS, {}, "adminStats"),
    (FAILED, {}, "failedImages"),
    (JOB, {"id": "a" * 32}, "adminJob"),
    (RETRY_IMAGE, {"id": "a" * 32}, "retryImage"),
    (RETRY_FAILED, {}, "retryFailed"),
    (RERUN, {"v": "1.0"}, "rerunOlderModel"),
]


@pytest.mark.parametrize("query,variables,field", ADMIN_CALLS, ids=[c[2] for c in ADMIN_CALLS])
def test_only_admins_may(admin_api, query, variables, field):
    failed = _images(1, ImageStatus.FAILED, error="broken")
    sqs, url = _queue(admin_api.settings)
    waiting = jobs.queue_depth(sqs, url)  # (S3's test event, sent when the notification was set up)
    anonymous = admin_api.gql(query, variables)[field]
    assert anonymous == {"__typename": "NotAuthenticated", "code": "UNAUTHENTICATED", "message": "sign in to do this"}
    signed_in = admin_api.gql(query, variables, user="bob")[field]  # a user without the admin role
    assert signed_in == {"__typename": "Forbidden", "code": "FORBIDDEN", "message": "only an admin may do this"}
    refused = admin_api.gql(query, variables, token="not.a.jwt")[field]
    assert refused["__typename"] == "NotAuthenticated" and "malformed token" in refused["message"]
    # Nothing happened: no job, nothing queued, the failed image untouched.
    assert JobModel.count() == 0 and ImageModel.get(failed[0]).status == "FAILED"
    assert jobs.queue_depth(sqs, url) == waiting


def test_me_shows_the_roles_of_the_token(admin_api):
    assert admin_api.gql("{ me { id roles } }", token=_admin_token(admin_api.settings)) == {
        "me": {"id": "root", "roles": ["admin"]}}
    assert admin_api.gql("{ me { id roles } }", user="bob") == {"me": {"id": "bob", "roles": []}}


# --- what admins see -------------------------------------------------------------------------------


def test_counts_by_status_and_model_versions(admin_api):
    _images(3, ImageStatus.DONE, model_version="classifier 1.0")
    _images(2, ImageStatus.DONE, model_version="classifier 0.9")
    _images(4, ImageStatus.FAILED, error="not an image")
    _images(1, ImageStatus.PROCESSING)
    stats = admin_api.gql(STATS, token=_admin_token(admin_api.settings))["adminStats"]
    assert stats["__typename"] == "AdminStats"
    assert {c["status"]: c["count"] for c in stats["counts"]} == {
        "AWAITING_UPLOAD": 0, "PROCESSING": 1, "DONE": 5, "FAILED": 4}
    assert stats["modelVersions"] == [{"modelVersion": "classifier 1.0", "count": 3},
                                      {"modelVersion": "classifier 0.9", "count": 2}]
    assert stats["currentModelVersion"] is None  # no TorchServe here: its management API is not reachable
    assert stats["runningJobs"] == []


def test_failed_images_most_recent_first_with_their_reasons_page_by_page(admin_api):
    older = _images(3, ImageStatus.FAILED, error="the image is damaged", age_seconds=120)
    newer = _images(2, ImageStatus.FAILED, error="gave up after 5 attempts", age_seconds=60)
    _images(2, ImageStatus.DONE, model_version="classifier 1.0")
    token = _admin_token(admin_api.settings)
    seen, after = [], None
    while True:
        page = admin_api.gql(FAILED, {"first": 2, "after": after}, token=token)["failedImages"]
        seen += [edge["node"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert [n["id"] for n in seen] == list(reversed(older + newer))  # most recently failed first
    assert {n["error"] for n in seen[:2]} == {"gave up after 5 attempts"}
    assert all(n["status"] == "FAILED" for n in seen)
    bad = admin_api.post(FAILED, {"after": "2026-01-01T00:00:00#x"}, token=token).json()
    assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_retry_image_queues_a_rerun_of_anyones_image(admin_api):
    image_id = _images(1, ImageStatus.FAILED, owner="bob", error="broken")[0]
    result = admin_api.gql(RETRY_IMAGE, {"id": image_id}, token=_admin_token(admin_api.settings))["retryImage"]
    assert result == {"__typename": "Image", "id": image_id, "status": "PROCESSING", "error": None}
    assert [r["imageId"] for r in _work(admin_api.settings)] == [image_id]
    assert ImageModel.get(image_id).status == "DONE"
    unknown = admin_api.gql(RETRY_IMAGE, {"id": "b" * 32}, token=_admin_token(admin_api.settings))["retryImage"]
    assert unknown["__typename"] == "NotFound"


# --- bulk jobs ------------------------------------------------------------------------------------


def _job(api: Api, job_id: str) -> dict:
    return api.gql(JOB, {"id": job_id}, token=_admin_token(api.settings))["adminJob"]


def test_retry_all_failed_is_paced_and_its_progress_reaches_the_total(admin_api):
    """40 failed images and 10 uploads already waiting: the feeder never lets the queue hold more
    than reprocess_max_outstanding (16) messages, each image is queued once, and the job ends
    with finished == total."""
    settings = admin_api.settings
    limit = settings.reprocess_max_outstanding
    failed = _images(40, ImageStatus.FAILED, error="TorchServe was down")
    sqs, url = _queue(settings)
    _work(settings)  # (S3's test event, sent when the bucket notification was set up)
    uploads = [json.dumps({"Records": [{"eventSource": "aws:s3", "upload": n}]}) for n in range(10)]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": b} for n, b in enumerate(uploads)])

    job = admin_api.gql(RETRY_FAILED, token=_admin_token(settings))["retryFailed"]
    assert job["__typename"] == "AdminJob" and job["state"] == "RUNNING" and job["total"] == 40
    assert job["kind"] == "RETRY_FAILED" and job["createdBy"] == "root"
    again = admin_api.gql(RETRY_FAILED, token=_admin_token(settings))["retryFailed"]
    assert again["id"] == job["id"]  # pressed twice: the same job

    feeder = Feeder(settings)
    feeder.step()
    assert jobs.queue_depth(sqs, url) == limit  # 10 uploads + 6 re-runs: the uploads are not starved
    assert _job(admin_api, job["id"])["queued"] == limit - 10
    rerun: list[str] = []
    deepest = 0
    for _ in range(60):
        taken = _work(settings, limit=7)
        rerun += [r["imageId"] for r in taken]
        feeder.step()
        deepest = max(deepest, jobs.queue_depth(sqs, url))
        progress = _job(admin_api, job["id"])
        assert progress["queued"] - progress["finished"] <= limit
        if progress["state"] == "DONE":
            break
    assert deepest == limit  # the bound was reached, never passed
    assert progress == {**job, "state": "DONE", "queued": 40, "finished": 40}
    assert Counter(rerun) == Counter(failed)  # each failed image exactly once
    assert all(m.status == "DONE" for m in ImageModel.batch_get(failed))


def test_two_feeders_never_queue_an_image_twice_and_one_takes_over_from_a_dead_one(admin_api):
    settings = admin_api.settings.model_copy(update={"bulk_job_lease_seconds": 4})
    failed = _images(30, ImageStatus.FAILED, error="broken")
    job = admin_api.gql(RETRY_FAILED, token=_admin_token(settings))["retryFailed"]
    first, second = Feeder(settings), Feeder(settings)
    assert first.step() == 1 and second.step() == 0  # the first holds the lease
    time.sleep(4.5)  # the first "dies": its lease runs out, the second takes over
    rerun: list[str] = [r["imageId"] for r in _work(settings, limit=100, fail={failed[0]})]
    stop = threading.Event()

    def feed(feeder: Feeder) -> None:
        while not stop.is_set():
            feeder.step()

    threads = [threading.Thread(target=feed, args=(f,)) for f in (first, second)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 120
        while _job(admin_api, job["id"])["state"] != "DONE":
            assert time.monotonic() < deadline, _job(admin_api, job["id"])
            rerun += [r["imageId"] for r in _work(settings, limit=5, fail={failed[0]})]
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert Counter(rerun) == Counter(failed)  # every image once, whichever feeder queued it
    done = _job(admin_api, job["id"])
    assert done["finished"] == done["total"] == 30
    # The one that failed again is not retried by this job again: it is FAILED, newer than the job.
    assert ImageModel.get(failed[0]).status == "FAILED"


def test_the_api_feeds_jobs_in_the_background(aws_settings):
    settings = aws_settings.model_copy(update={"bulk_feed_interval_seconds": 0.2})
    failed = _images(5, ImageStatus.FAILED, error="broken")
    with TestClient(create_app(settings)) as test_client:
        api = Api(test_client, settings)
        job = api.gql(RETRY_FAILED, token=_admin_token(settings))["retryFailed"]
        deadline = time.monotonic() + 60
        while (progress := _job(api, job["id"]))["state"] != "DONE":
            assert time.monotonic() < deadline, progress
            _work(settings)
            time.sleep(0.2)
    assert progress["finished"] == progress["total"] == 5
    assert all(m.status == "DONE" for m in ImageModel.batch_get(failed))


def test_nothing_to_retry_is_a_finished_job(admin_api):
    job = admin_api.gql(RETRY_FAILED, token=_admin_token(admin_api.settings))["retryFailed"]
    assert (job["state"], job["total"], job["queued"]) == ("DONE", 0, 0)


def test_rerun_older_model_without_the_model_server_says_so(admin_api):
    result = admin_api.gql(RERUN, {}, token=_admin_token(admin_api.settings))["rerunOlderModel"]
    assert result["__typename"] == "ModelServerUnavailable" and "not reachable" in result["message"]
    assert JobModel.count() == 0


@pytest.mark.torchserve
def test_rerun_older_model_reruns_what_another_version_made(aws_settings, torchserve):
    """TorchServe (real) says which version is the default: images made by another one are re-run
    through it; those already made by it are left alone. An unknown version is refused."""
    settings = aws_settings.model_copy(update=torchserve.settings_overrides())
    current = _images(3, ImageStatus.DONE, model_version="classifier 1.0")
    older = _images(4, ImageStatus.DONE, model_version="classifier 0.9")
    _images(2, ImageStatus.FAILED, error="broken")
    with _without_feeder(settings) as test_client:
        api = Api(test_client, settings)
        token = _admin_token(settings)
        refused = api.gql(RERUN, {"v": "7.0"}, token=token)["rerunOlderModel"]
        assert refused["__typename"] == "InvalidInput" and refused["field"] == "version"
        assert "1.0" in refused["message"]
        stats = api.gql(STATS, token=token)["adminStats"]
        assert stats["currentModelVersion"] == "1.0"
        job = api.gql(RERUN, {}, token=token)["rerunOlderModel"]
        assert job["__typename"] == "AdminJob" and job["modelVersion"] == "1.0" and job["total"] == 4
        feeder = Feeder(settings)
        records = []
        for _ in range(10):
            feeder.step()
            records += _work(settings)
            if _job(api, job["id"])["state"] == "DONE":
                break
    assert sorted(r["imageId"] for r in records) == sorted(older)
    assert {r["modelVersion"] for r in records} == {"1.0"}  # through the default version
    assert {m.model_version for m in ImageModel.batch_get(older + current)} == {"classifier 1.0"}
