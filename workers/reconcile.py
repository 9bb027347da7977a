"""Reconciliation: nothing is lost when a notification or a queue's messages are.

Images still AWAITING_UPLOAD for longer than `worker_stale_upload_seconds` whose original exists
(the S3 event never arrived), and images PROCESSING for longer than
`worker_stale_processing_seconds` with no live lease (a worker died and the message is gone, e.g.
a local queue server that forgot its messages), are queued again as pending-only re-runs. The
consumer runs it on start, every `worker_reconcile_interval_seconds`, and at once when it finds
the queue missing. Duplicates this may create converge (see workers/processor.py).

An image still AWAITING_UPLOAD with no original long after its upload URL expired can never be
completed (no URL is issued again): it is marked FAILED, saying so, so it does not wait forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import structlog
from pynamodb.exceptions import PynamoDBException

from udagram import data, image_records, jobs
from udagram.aws import client, object_exists
from udagram.data import ImageModel, ImageStatus
from udagram.settings import Settings
from workers import metrics

log = structlog.get_logger(__name__)
LOGGED_IDS = 100  # ids named in the log line of a pass (the count is always whole)


def _older_than(seconds: float) -> str:
    return data.sortable_time(data.utcnow() - timedelta(seconds=seconds))


# How long after its URL expired an upload may still turn up: SeaweedFS refuses a POST whose body
# ends after the expiry, but other S3 servers may check the policy when the request starts, and
# the event may be late. Well over the upload URL's lifetime (settings.upload_url_ttl_seconds);
# an upload arriving later still is processed anyway (a FAILED record is leased again).
UPLOAD_GRACE_SECONDS = 600


def _abandon(image: ImageModel, settings: Settings) -> None:
    reason = (f"the upload never arrived: its upload URL expired {settings.upload_url_ttl_seconds} s after the "
              "image was created; delete it and upload the file again")
    try:
        if image_records.abandon_upload(image, reason):
            log.info("upload never arrived: image marked FAILED", image_id=image.id)
        else:  # uploaded or deleted meanwhile: nothing to do
            log.info("abandoned upload not marked", image_id=image.id, error="no longer awaiting its upload")
    except PynamoDBException as exc:  # the next pass tries again
        log.info("abandoned upload not marked", image_id=image.id, error=str(exc))


def stranded_images(settings: Settings, s3: Any = None, queue_lost: bool = False) -> Iterator[str]:
    """`queue_lost`: the queue was lost with its messages, so uploads of any age count."""
    s3 = s3 or client("s3", settings)
    expired = _older_than(settings.upload_url_ttl_seconds + UPLOAD_GRACE_SECONDS)
    upload_age = 0 if queue_lost else settings.worker_stale_upload_seconds
    for image in ImageModel.by_status.query(ImageStatus.AWAITING_UPLOAD.value,
                                            ImageModel.status_changed_at < _older_than(upload_age)):
        if object_exists(s3, settings.originals_bucket, image.original_key):
            yield image.id
        elif image.status_changed_at < expired:
            _abandon(image, settings)
    now = time.time()
    for image in ImageModel.by_status.query(ImageStatus.PROCESSING.value,
                                            ImageModel.status_changed_at < _older_than(
                                                settings.worker_stale_processing_seconds)):
        if (image.lease_expires_at or 0) < now:
            yield image.id


def reconcile(settings: Settings, s3: Any = None, sqs: Any = None, queue_lost: bool = False) -> int:
    """Queue re-runs for stranded images; returns how many."""
    ids = list(stranded_images(settings, s3, queue_lost))
    if ids:
        jobs.enqueue_reprocess(ids, settings=settings, sqs=sqs, pending_only=True)
        metrics.RECONCILED.inc(len(ids))
        log.info("reconciled: re-queued stranded images", requeued=len(ids), image_ids=ids[:LOGGED_IDS])
    return len(ids)
