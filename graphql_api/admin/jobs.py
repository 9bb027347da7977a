"""Bulk re-runs started from the admin view, fed to the queue at the pace of `udagram reprocess`.

A job is a record in the jobs table: which images (`kind`: every FAILED one, or every DONE one
made by another model version than the target), counted when it starts (`total`), and how far it
got (`queued`, `finished`). Blocking code (PynamoDB, boto3): the API runs it in worker threads.

Feeding (`feed`), one step at a time by whichever API process holds the job's lease:
1. the images it queued earlier (`outstanding`) that are DONE or FAILED again (or deleted) are
   `finished`;
2. room = what the queue has room for (`udagram.jobs.reprocess_room`: fewer than
   `reprocess_max_outstanding` waiting messages, so new uploads wait behind at most that many),
   and never more than `reprocess_max_outstanding` of this job's images unfinished;
3. the next images of the selection (the `by_status` index, oldest change first, from `cursor`)
   are claimed one by one: a conditional write sets each PROCESSING only if it still is as
   selected, so an image is queued once even if two processes fed the same job;
4. the job record is updated (conditional on the lease), then the claimed images are queued.
A process that dies between 3 and 4 leaves images PROCESSING without a message: the worker's
reconciliation queues them again after `worker_stale_processing_seconds`.
"""

from __future__ import annotations

import enum
import time
from typing import Any

import structlog
from pynamodb.exceptions import DoesNotExist, UpdateError
from pynamodb.expressions.update import Action

from udagram import data, image_records, jobs
from udagram.data import ImageModel, ImageStatus, JobModel, JobState
from udagram.settings import Settings

log = structlog.get_logger(__name__)


class JobKind(str, enum.Enum):
    RETRY_FAILED = "RETRY_FAILED"  # every FAILED image
    RERUN_OLDER_MODEL = "RERUN_OLDER_MODEL"  # every DONE image made by another model version


def model_label(settings: Settings, version: str) -> str:
    """How the worker records a version on an image ("classifier 2.0")."""
    return f"{settings.model_name} {version}"


def _selection(job: JobModel, settings: Settings) -> tuple[str, Any]:
    """The `by_status` partition a job reads and the filter on it."""
    if job.kind == JobKind.RETRY_FAILED.value:
        return ImageStatus.FAILED.value, None
    return ImageStatus.DONE.value, ImageModel.model_version != model_label(settings, job.model_version)


def start(kind: JobKind, user_id: str, settings: Settings, model_version: str | None = None) -> JobModel:
    """A new job, its `total` counted now (COUNT queries); DONE at once when there is nothing to do."""
    now = data.utcnow()
    job_id = data.new_id()
    job = JobModel(id=job_id, kind=kind.value, created_key=data.created_key(now, job_id), created_at=now,
                   created_by=user_id, selected_before=data.sortable_time(now), model_version=model_version)
    status, condition = _selection(job, settings)
    job.total = data.ImageModel.by_status.count(
        status, data.ImagesByStatus.status_changed_at < job.selected_before, filter_condition=condition)
    if job.total == 0:
        job.state, job.finished_at = JobState.DONE.value, now
    job.save(condition=JobModel.id.does_not_exist())
    log.info("bulk job started", job_id=job.id, kind=job.kind, total=job.total, by=user_id)
    return job


def running() -> list[JobModel]:
    return list(JobModel.by_state.query(JobState.RUNNING.value))


def get(job_id: str) -> JobModel | None:
    try:
        return JobModel.get(job_id)
    except DoesNotExist:
        return None


def take_lease(job: JobModel, owner: str, seconds: float) -> bool:
    """Hold the job for `seconds` (again, if held already); False if another process holds it."""
    now = time.time()
    try:
        job.update(actions=[JobModel.lease_owner.set(owner), JobModel.lease_expires_at.set(now + seconds)],
                   condition=data.flat((JobModel.state == JobState.RUNNING.value)
                                       & (JobModel.lease_expires_at.does_not_exist() | (JobModel.lease_expires_at < now)
                                          | (JobModel.lease_owner == owner))))
        return True
    except UpdateError as exc:
        if data.condition_failed(exc):
            return False
        raise


def release_lease(job: JobModel, owner: str) -> None:
    try:
        job.update(actions=[JobModel.lease_expires_at.set(0)], condition=JobModel.lease_owner == owner)
    except UpdateError:
        pass  # taken over or gone: nothing to give back


def _claim(image: ImageModel, job: JobModel, settings: Settings) -> bool:
    """Set an image PROCESSING for this job, if it still is as the job selected it."""
    status, condition = _selection(job, settings)
    # False: changed meanwhile (deleted, retried by its owner, claimed by another feeder)
    return image_records.claim_for_job(image, status, condition)


def _finished(ids: set[str]) -> set[str]:
    """Those of `ids` that are DONE or FAILED again, or deleted."""
    records = data.batch_get(ImageModel, ids)
    return {i for i in ids if i not in records or records[i].status in (ImageStatus.DONE.value,
                                                                        ImageStatus.FAILED.value)}


END = "END"  # the cursor once the whole selection was read


def feed(job: JobModel, owner: str, settings: Settings, sqs: Any, queue_url: str) -> JobModel:
    """One step of a job whose lease `owner` holds (see the module's docstring); the job as saved."""
    limit = max(1, settings.reprocess_max_outstanding)
    outstanding = set(job.outstanding or ())
    done_now = _finished(outstanding) if outstanding else set()
    outstanding -= done_now
    claimed: list[ImageModel] = []
    cursor = job.cursor
    if cursor != END:
        room = min(jobs.reprocess_room(sqs, queue_url, limit), limit - len(outstanding))
        if room > 0:
            status, condition = _selection(job, settings)
            candidates, next_cursor = data.page_by_status(
                status, room, cursor, newest_first=False, changed_before=job.selected_before,
                filter_condition=condition)
            claimed = [image for image in candidates if _claim(image, job, settings)]
            cursor = next_cursor or END
    outstanding |= {image.id for image in claimed}
    queued = int(job.queued or 0) + len(claimed)
    actions: list[Action] = [JobModel.finished.set(int(job.finished or 0) + len(done_now)), JobModel.queued.set(queued),
               JobModel.outstanding.set(outstanding) if outstanding else JobModel.outstanding.remove()]
    if cursor is not None:
        actions.append(JobModel.cursor.set(cursor))
    if cursor == END and not outstanding:
        # `total` was counted at the start; images changed meanwhile (retried by their owner,
        # deleted) were not re-run by the job: in the end it is what the job did re-run.
        actions += [JobModel.state.set(JobState.DONE.value), JobModel.finished_at.set(data.utcnow()),
                    JobModel.total.set(queued), JobModel.lease_owner.remove(), JobModel.lease_expires_at.remove()]
    else:
        actions.append(JobModel.lease_expires_at.set(time.time() + settings.bulk_job_lease_seconds))
    try:
        job.update(actions=actions, condition=JobModel.lease_owner == owner)
    finally:  # the claimed images are this step's alone: queued even if the lease was lost meanwhile
        if claimed:
            data.touch_groups(image.group_id for image in claimed)
            version = job.model_version if job.kind == JobKind.RERUN_OLDER_MODEL.value else None
            jobs.enqueue_reprocess([image.id for image in claimed], version, settings=settings, sqs=sqs)
    log.info("bulk job fed", job_id=job.id, queued=len(claimed), finished=len(done_now), state=job.state)
    return job
