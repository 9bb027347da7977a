"""The image record's writes (udagram/image_records.py) against DynamoDB (moto server): each
condition refuses what it guards against and leaves the record as it was."""

from __future__ import annotations

import time

from udagram import data, image_records
from udagram.data import ImageModel, ImageStatus
from udagram.settings import Settings

GROUP = "a" * 32
CAT = [("tabby", 0.6), ("tiger cat", 0.3)]


def new_image(caption: str = "a cat", file_name: str = "cat.jpg") -> ImageModel:
    return image_records.create(group_id=GROUP, owner="alice", caption=caption, file_name=file_name,
                                content_type="image/png", content_length=123)


def stored(image_id: str) -> ImageModel:
    return ImageModel.get(image_id, consistent_read=True)


def leased(image: ImageModel, token: str = "t1", **conditions: object) -> ImageModel:
    record = image_records.acquire_lease(image.id, token, 60, **conditions)  # type: ignore[arg-type]
    assert record is not None
    return record


def done(image: ImageModel, token: str = "t1", etag: str | None = "etag-1", version: str = "classifier 1.0") -> None:
    leased(image, token)
    assert image_records.complete(image.id, token, title="tabby - 60.0%", predictions=CAT,
                                  processed_key=data.processed_key(image.id), model_version=version,
                                  source_etag=etag)


def test_create_awaits_the_upload_and_never_overwrites(aws_settings: Settings) -> None:
    image = new_image()
    record = stored(image.id)
    assert (record.status, record.title, record.owner, record.attempts) == ("AWAITING_UPLOAD", "a cat", "alice", 0)
    assert record.original_key == f"originals/{image.id}.png" and record.created_key.endswith(image.id)
    assert data.is_valid_created_key(record.created_key)
    assert new_image(caption="", file_name="dog.png").title == "dog.png"
    image_records.discard_new(image)
    assert ImageModel.count() == 1


def test_one_live_lease_at_a_time(aws_settings: Settings) -> None:
    image = new_image()
    first = leased(image, "t1")
    assert (first.status, first.lease_owner, first.attempts) == ("PROCESSING", "t1", 1)
    assert image_records.acquire_lease(image.id, "t2", 60) is None  # held by t1
    assert leased(image, "t1").attempts == 2  # the same delivery again
    ImageModel(image.id).update(actions=[ImageModel.lease_expires_at.set(time.time() - 1)])
    assert leased(image, "t2").lease_owner == "t2"  # expired: taken over
    assert not image_records.extend_lease(image.id, "t1", 60)
    assert image_records.extend_lease(image.id, "t2", 600)
    assert stored(image.id).lease_expires_at > time.time() + 500
    assert image_records.acquire_lease("f" * 32, "t1", 60) is None  # no record: none created
    assert ImageModel.count() == 1


def test_an_event_about_another_object_or_the_same_finished_object_changes_nothing(aws_settings: Settings) -> None:
    image = new_image()
    assert image_records.acquire_lease(image.id, "t1", 60, s3_original_key="originals/other.png") is None
    assert stored(image.id).status == "AWAITING_UPLOAD"
    done(image, etag="etag-1")
    before = stored(image.id).serialize()
    assert image_records.acquire_lease(image.id, "t2", 60, s3_original_key=image.original_key, s3_etag="etag-1") is None
    assert stored(image.id).serialize() == before  # a duplicate event: nothing written
    assert leased(image, "t3", s3_original_key=image.original_key, s3_etag="etag-2").status == "PROCESSING"


def test_pending_only_and_model_version_skips(aws_settings: Settings) -> None:
    image = new_image()
    done(image, version="classifier 1.0")
    assert image_records.acquire_lease(image.id, "t2", 60, pending_only=True) is None
    assert image_records.acquire_lease(image.id, "t2", 60, unless_done_with="classifier 1.0") is None
    assert stored(image.id).status == "DONE"
    assert leased(image, "t2", unless_done_with="classifier 2.0").lease_owner == "t2"


def test_final_writes_need_the_lease(aws_settings: Settings) -> None:
    image = new_image()
    leased(image, "t1")
    ImageModel(image.id).update(actions=[ImageModel.lease_expires_at.set(time.time() - 1)])
    leased(image, "t2")  # t1's lease expired and t2 took over
    assert not image_records.complete(image.id, "t1", title="late", predictions=CAT, processed_key="processed/x.jpg",
                                      model_version="classifier 1.0", source_etag=None)
    assert not image_records.fail(image.id, "t1", "late")
    assert not image_records.keep_result(image.id, "t1", "late")
    assert not image_records.release_lease(image.id, "t1", count_attempt=False)
    record = stored(image.id)
    assert (record.status, record.lease_owner, record.title, record.error) == ("PROCESSING", "t2", "a cat", None)
    assert image_records.complete(image.id, "t2", title="tabby - 60.0%", predictions=CAT,
                                  processed_key=data.processed_key(image.id), model_version="classifier 1.0",
                                  source_etag="etag-1")
    record = stored(image.id)
    assert (record.status, record.title, record.labels_pending, record.source_etag) == \
        ("DONE", "tabby - 60.0%", "t2", "etag-1")
    assert [(p.label, p.probability) for p in record.predictions] == CAT
    assert record.lease_owner is None and record.attempts == 0 and record.processed_at is not None


def test_a_failed_rerun_keeps_the_result_and_a_failure_records_its_object(aws_settings: Settings) -> None:
    kept, failed = new_image(), new_image()
    done(kept)
    leased(kept, "t2")
    assert image_records.keep_result(kept.id, "t2", "x" * 2000)
    record = stored(kept.id)
    assert (record.status, record.title, len(record.error), record.lease_owner) == ("DONE", "tabby - 60.0%", 1000, None)
    leased(failed, "t1")
    assert image_records.fail(failed.id, "t1", "not an image", "etag-9")
    record = stored(failed.id)
    assert (record.status, record.error, record.source_etag, record.lease_owner) == \
        ("FAILED", "not an image", "etag-9", None)


def test_release_gives_the_try_back(aws_settings: Settings) -> None:
    image = new_image()
    leased(image, "t1")
    assert image_records.release_lease(image.id, "t1", count_attempt=False, error="TorchServe unreachable")
    record = stored(image.id)
    assert (record.attempts, record.lease_expires_at, record.lease_owner, record.error) == \
        (0, 0, None, "TorchServe unreachable")
    assert leased(image, "t2").attempts == 1  # free at once


def test_rerun_requests_coalesce_until_a_worker_picks_one_up(aws_settings: Settings) -> None:
    image = new_image()
    done(image)
    model = stored(image.id)
    asked = time.time()
    assert image_records.request_rerun(model, asked, 900)
    assert (model.status, model.rerun_requested_at) == ("PROCESSING", asked)  # the instance is refreshed
    assert not image_records.request_rerun(stored(image.id), asked + 1, 900)  # coalesced
    assert image_records.request_rerun(stored(image.id), asked + 1000, 900)  # the pending one is stale
    assert not image_records.withdraw_rerun_request(model, asked)  # not this request's marker any more
    assert image_records.withdraw_rerun_request(model, asked + 1000)
    assert stored(image.id).rerun_requested_at is None
    assert image_records.request_rerun(model, asked + 1001, 900)
    assert leased(image, "t1").rerun_requested_at is None  # picked up
    assert stored(image.id).rerun_requested_at is None
    image_records.delete(stored(image.id))
    assert not image_records.request_rerun(model, asked + 2000, 900)  # gone: not created again
    assert ImageModel.count() == 0


def test_a_job_claims_an_image_only_as_it_selected_it(aws_settings: Settings) -> None:
    image = new_image()
    leased(image)
    assert image_records.fail(image.id, "t1", "boom")
    selected = stored(image.id)
    assert not image_records.claim_for_job(selected, "DONE", None)
    assert not image_records.claim_for_job(selected, "FAILED", ImageModel.model_version == "classifier 9")
    assert image_records.claim_for_job(selected, "FAILED", None)
    record = stored(image.id)
    assert (record.status, record.error, record.attempts) == ("PROCESSING", None, 0)
    assert not image_records.claim_for_job(selected, "FAILED", None)  # claimed already (by another feeder)


def test_only_an_upload_still_awaited_is_abandoned(aws_settings: Settings) -> None:
    waiting, uploaded = new_image(), new_image()
    leased(uploaded)
    assert image_records.abandon_upload(waiting, "the upload never arrived")
    assert not image_records.abandon_upload(uploaded, "the upload never arrived")
    assert (stored(waiting.id).status, stored(waiting.id).error) == ("FAILED", "the upload never arrived")
    assert stored(uploaded.id).status == ImageStatus.PROCESSING.value


def test_delete_refuses_a_record_deleted_meanwhile(aws_settings: Settings) -> None:
    image = new_image()
    assert image_records.delete(image)
    assert not image_records.delete(image)  # gone already: not an error


def test_the_labels_marker_is_cleared_only_with_its_own_value(aws_settings: Settings) -> None:
    image = new_image()
    done(image, token="t1")
    assert not image_records.clear_labels_pending(image.id, "t0")
    assert stored(image.id).labels_pending == "t1"
    assert image_records.clear_labels_pending(image.id, "t1")
    assert stored(image.id).labels_pending is None
