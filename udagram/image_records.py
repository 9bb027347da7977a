"""Every write of an image record (`udagram.data.ImageModel`), in one place: the API's create,
delete and re-run request, an admin job's claim, the worker's lease and final writes,
reconciliation's abandoned uploads, and the search index's pending marker.

The conditions are the correctness guarantees: they settle duplicate and out-of-order deliveries,
forged S3 events, concurrent workers and concurrent API requests inside DynamoDB, never by
read-then-write (workers/processor.py explains the lease). Change one only with its callers.

Convention: a conditional write returns False when its condition refuses it (the record is not as
required, or gone); any other failure raises the PynamoDB exception, for the caller to judge.
(`delete` raises DeleteError either way: its callers treat both alike.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

from pynamodb.exceptions import DeleteError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from udagram import data
from udagram.data import ImageModel, ImageStatus, Prediction

ERROR_MAX = 1000  # characters of an error kept on the record

M = ImageModel


def _written(write: Callable[[], object]) -> bool:
    """Run one conditional write: False if its condition refused it; DynamoDB failing raises."""
    try:
        write()
        return True
    except (UpdateError, DeleteError) as exc:
        if data.condition_failed(exc):
            return False
        raise


def _conditional_update(record: ImageModel | str, actions: Sequence[Action], condition: Condition) -> bool:
    """`record`: a model instance (PynamoDB refreshes it with the written item) or an id."""
    model = M(record) if isinstance(record, str) else record
    return _written(lambda: model.update(actions=list(actions), condition=data.flat(condition)))


# --- the API ----------------------------------------------------------------------------------


def create(*, group_id: str, owner: str, caption: str, file_name: str, content_type: str,
           content_length: int) -> ImageModel:
    """A new image (createImage): AWAITING_UPLOAD its original at `originals/<id>.<ext>`, titled
    by its caption or file name until processed. Never overwrites a record (fresh random id)."""
    now = data.utcnow()
    image_id = data.new_id()
    image = M(
        id=image_id,
        group_id=group_id,
        created_key=data.created_key(now, image_id),
        owner=owner,
        caption=caption,
        file_name=file_name,
        title=caption or file_name,
        status=ImageStatus.AWAITING_UPLOAD.value,
        status_changed_at=data.sortable_time(now),
        content_type=content_type,
        content_length=content_length,
        original_key=data.original_key(image_id, content_type),
        created_at=now,
    )
    image.save(condition=M.id.does_not_exist())
    return image


def discard_new(image: ImageModel) -> None:
    """Take back a record `create` just wrote whose creation could not be completed (its group's
    counter refused): unconditional, nobody else knows the id yet."""
    image.delete()


def delete(image: ImageModel) -> bool:
    """Remove an image's record (deleteImage, deleteGroup). False if it is gone already (someone
    else deleted it meanwhile); DeleteError if DynamoDB failed (the record may still be there)."""
    return _written(lambda: image.delete(condition=M.id.exists()))


def request_rerun(image: ImageModel, requested_at: float, stale_after_seconds: float) -> bool:
    """Mark an image PROCESSING with fresh tries for a re-run queued at `requested_at`
    (reprocessImage, an admin's retry). False if it is gone or a re-run requested less than
    `stale_after_seconds` ago is still waiting for a worker (this request is coalesced into it)."""
    return _conditional_update(
        image,
        [
            M.status.set(ImageStatus.PROCESSING.value),
            M.status_changed_at.set(data.sortable_time()),
            M.error.remove(),
            M.attempts.set(0),  # a re-run asked for by a person gets fresh tries
            M.rerun_requested_at.set(requested_at),
        ],
        # A re-run already queued and not yet picked up by a worker takes this request too. A
        # marker older than the worker's stale-processing time is ignored: by then reconciliation
        # has re-queued the image if its message was lost.
        M.id.exists() & (
            M.rerun_requested_at.does_not_exist()
            | (M.rerun_requested_at < requested_at - stale_after_seconds)
        ),
    )


def withdraw_rerun_request(image: ImageModel, requested_at: float) -> bool:
    """Remove the re-run marker `request_rerun` set at `requested_at` (its message could not be
    queued), so a retry queues the re-run. False if the marker is another request's or gone."""
    return _conditional_update(image, [M.rerun_requested_at.remove()], M.rerun_requested_at == requested_at)


def claim_for_job(image: ImageModel, status: str, selection: Condition | None) -> bool:
    """Set an image PROCESSING with fresh tries for an admin's bulk job, only if it still is as the
    job selected it (`status`, the same `status_changed_at`, the job's filter): an image is queued
    once even if two processes feed the same job. False if it changed meanwhile."""
    still = (M.status == status) & (M.status_changed_at == image.status_changed_at)
    if selection is not None:
        still &= selection
    return _conditional_update(
        image,
        [M.status.set(ImageStatus.PROCESSING.value), M.status_changed_at.set(data.sortable_time()),
         M.error.remove(), M.attempts.set(0)],
        still,
    )


# --- reconciliation ---------------------------------------------------------------------------


def abandon_upload(image: ImageModel, reason: str) -> bool:
    """FAILED with `reason`: an upload that never arrived. False if it was uploaded (or deleted)
    meanwhile."""
    return _conditional_update(
        image,
        [M.status.set(ImageStatus.FAILED.value), M.status_changed_at.set(data.sortable_time()), M.error.set(reason)],
        M.status == ImageStatus.AWAITING_UPLOAD.value,
    )


# --- the worker's lease -----------------------------------------------------------------------


def acquire_lease(image_id: str, token: str, lease_seconds: float, *, s3_original_key: str | None = None,
                  s3_etag: str | None = None, pending_only: bool = False,
                  unless_done_with: str | None = None) -> ImageModel | None:
    """Lease an image for the delivery `token`: PROCESSING, one more attempt, the re-run marker
    removed (picked up: a new reprocessImage queues a new run). Only if the record exists and no
    other live lease is held, and:
    - `s3_original_key`: an S3 event's object is the record's own original;
    - `s3_etag`: the record was not already finished (DONE or FAILED) from that same object;
    - `pending_only`: the image is still AWAITING_UPLOAD or PROCESSING (reconciliation's re-runs);
    - `unless_done_with`: the image is not DONE with this model version label already.
    The record written (id only), or None if the condition refused the lease."""
    now = time.time()
    cond = M.id.exists() & (M.lease_expires_at.does_not_exist() | (M.lease_expires_at < now)
                            | (M.lease_owner == token))
    if s3_original_key is not None:
        # In the condition, not read before: the record is never marked PROCESSING for an
        # event about another object, whatever happens between a read and the write.
        cond &= M.original_key == s3_original_key
    if s3_etag:
        cond &= ~(M.status.is_in(ImageStatus.DONE.value, ImageStatus.FAILED.value) & (M.source_etag == s3_etag))
    if pending_only:
        cond &= M.status.is_in(ImageStatus.AWAITING_UPLOAD.value, ImageStatus.PROCESSING.value)
    if unless_done_with:
        cond &= ~((M.status == ImageStatus.DONE.value) & (M.model_version == unless_done_with))
    record = M(image_id)
    actions = [
        M.status.set(ImageStatus.PROCESSING.value),
        M.status_changed_at.set(data.sortable_time()),
        M.lease_owner.set(token),
        M.lease_expires_at.set(now + lease_seconds),
        M.attempts.add(1),
        M.rerun_requested_at.remove(),
    ]
    return record if _conditional_update(record, actions, cond) else None


def extend_lease(image_id: str, token: str, lease_seconds: float) -> bool:
    """The lease of `token` runs `lease_seconds` from now. False if `token` no longer holds it."""
    return _conditional_update(image_id, [M.lease_expires_at.set(time.time() + lease_seconds)],
                               M.lease_owner == token)


def release_lease(image_id: str, token: str, *, count_attempt: bool, error: str | None = None) -> bool:
    """Give the lease of `token` back (transient failure, shutdown); `count_attempt=False` returns
    the try, `error` is kept as the last error. False if `token` no longer holds it."""
    actions: list[Action] = [M.lease_expires_at.set(0), M.lease_owner.remove()]
    if not count_attempt:
        actions.append(M.attempts.add(-1))
    if error:
        actions.append(M.error.set(error[:ERROR_MAX]))
    return _conditional_update(image_id, actions, M.lease_owner == token)


# --- the worker's final writes: only while holding the lease ----------------------------------


def complete(image_id: str, token: str, *, title: str, predictions: Sequence[tuple[str, float]],
             processed_key: str, model_version: str, source_etag: str | None,
             processed_at: datetime | None = None) -> bool:
    """DONE with a result, the lease ended, and `labels_pending` = `token` until the search index
    has the new labels (udagram/labels.py clears it). False if `token` no longer holds the lease
    (another worker took over, or the record was deleted)."""
    return _conditional_update(image_id, [
        M.status.set(ImageStatus.DONE.value),
        M.status_changed_at.set(data.sortable_time()),
        M.title.set(title),
        M.predictions.set([Prediction(label=label, probability=p) for label, p in predictions]),
        M.processed_key.set(processed_key),
        M.model_version.set(model_version),
        M.processed_at.set(processed_at or data.utcnow()),
        M.source_etag.set(source_etag) if source_etag else M.source_etag.remove(),
        M.error.remove(),
        M.attempts.set(0),
        M.lease_owner.remove(),
        M.lease_expires_at.remove(),
        M.labels_pending.set(token),
    ], M.lease_owner == token)


def keep_result(image_id: str, token: str, error: str) -> bool:
    """A failed re-run of an image that has a result: DONE again with that result, `error` says
    why the re-run failed, the lease ended. False if `token` no longer holds the lease."""
    return _conditional_update(image_id, [
        M.status.set(ImageStatus.DONE.value),
        M.status_changed_at.set(data.sortable_time()),
        M.error.set(error[:ERROR_MAX]),
        M.attempts.set(0),
        M.lease_owner.remove(),
        M.lease_expires_at.remove(),
    ], M.lease_owner == token)


def fail(image_id: str, token: str, error: str, source_etag: str | None = None) -> bool:
    """FAILED with `error`, the lease ended; `source_etag`: the original it failed on (a duplicate
    event about the same object is then skipped). False if `token` no longer holds the lease."""
    actions: list[Action] = [
        M.status.set(ImageStatus.FAILED.value),
        M.status_changed_at.set(data.sortable_time()),
        M.error.set(error[:ERROR_MAX]),
        M.lease_owner.remove(),
        M.lease_expires_at.remove(),
    ]
    if source_etag:
        actions.append(M.source_etag.set(source_etag))
    return _conditional_update(image_id, actions, M.lease_owner == token)


# --- the search index -------------------------------------------------------------------------


def clear_labels_pending(image_id: str, marker: str) -> bool:
    """The search index matches the predictions `complete` wrote with `marker`: remove the marker.
    False if a newer result set its own (its writer clears it)."""
    return _conditional_update(image_id, [M.labels_pending.remove()], M.labels_pending == marker)
