"""One image, end to end: lease, download, validate, classify, render, upload, record update.

Concurrency (several workers, duplicate deliveries) is settled in DynamoDB, never by
read-then-put:
- **Lease.** A conditional UpdateItem marks the image PROCESSING with `lease_owner` = this
  delivery's token and `lease_expires_at` = now + the visibility timeout, only if the record exists
  and no other live lease is held. For an S3 event it also requires that the event names the
  record's own original (`original_key`; the bucket is checked before) and that the record was not
  already finished from the same object (`source_etag`), so a duplicate event is acknowledged
  without work and a forged one changes nothing; a re-run with `--model-version V` is skipped when
  the image is already DONE with V. The original is always read from the originals bucket at the
  record's `original_key`, never from where a message says.
  The consumer's heartbeat extends the lease together with the message's visibility.
- **Final write.** The DONE (or FAILED) UpdateItem is conditional on still holding the lease. If
  another worker took it over (ours expired), this delivery stops without writing; the holder's own
  message carries the work to the end. The processed object's key is deterministic, so concurrent
  uploads of the same result simply overwrite each other.
- **Attempts.** Each lease adds one to `attempts`; a transient failure gives it back. An image whose
  deliveries keep dying (a worker killed mid-image, an unexpected error) ends FAILED once
  `attempts` exceeds `worker_max_attempts`, with the last error.
- **Failures keep an earlier result of a re-run.** When a re-run of an image that has a result
  fails (unknown model version, bad input, given up), the image stays DONE with that result and
  `error` says why the re-run failed; otherwise it ends FAILED with the error.

The writes themselves, with their conditions, are `udagram/image_records.py`'s.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import DoesNotExist, PynamoDBException

from udagram import data, image_records, labels
from udagram.aws import client, is_not_found
from udagram.data import ImageModel, ImageStatus
from udagram.settings import Settings
from workers import metrics, render
from workers.canary import VersionRouter
from workers.errors import (
    BucketMissing,
    LeaseLost,
    PermanentFailure,
    PoisonInput,
    RecordMissing,
    TransientError,
)
from workers.events import ImageTask, normalise_etag
from workers.inference_client import Classifier

log = structlog.get_logger(__name__)


class Outcome(str, Enum):
    DONE = "done"
    FAILED = "failed"  # poison input, permanent failure, given up: record FAILED, message acknowledged
    RERUN_FAILED = "rerun_failed"  # a re-run failed: the earlier result stays, with the error
    SKIPPED = "skipped"  # duplicate / already up to date: acknowledged
    IGNORED = "ignored"  # an S3 event that does not name the record's original: acknowledged, logged
    DEFERRED = "deferred"  # another worker holds a live lease: look again later


@dataclass
class Result:
    outcome: Outcome
    detail: str = ""
    retry_after: float = 0.0  # for DEFERRED: seconds until the other lease expires
    timings: dict[str, float] = field(default_factory=dict)
    dead_letter: bool = False  # also keep the message in the DLQ (an operator must act)


def _s3_error(exc: ClientError | BotoCoreError, what: str, bucket: str) -> Exception:
    """NoSuchBucket is permanent (a deployment problem); other S3 faults are transient."""
    if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
        return BucketMissing(f"{what}: the bucket {bucket} does not exist")
    return TransientError(f"{what}: {type(exc).__name__}: {exc}")


class Processor:
    def __init__(self, settings: Settings, classifier: Classifier | None = None, s3=None):
        self.settings = settings
        self.classifier = classifier or Classifier(settings)
        self.router = VersionRouter(settings, self.classifier)  # the canary, per-version metrics
        self.s3 = s3 or client("s3", settings, max_pool_connections=max(10, settings.worker_concurrency * 2))
        self.lease_seconds = settings.worker_visibility_timeout_seconds

    @staticmethod
    def new_token() -> str:
        return uuid.uuid4().hex

    # ---- lease ------------------------------------------------------------------------------
    def acquire(self, task: ImageTask, token: str) -> ImageModel | Result:
        from_s3 = task.source == "s3"
        try:
            record = image_records.acquire_lease(
                task.image_id, token, self.lease_seconds,
                s3_original_key=(task.key or "") if from_s3 else None,  # "": no record's original
                s3_etag=task.etag if from_s3 else None,
                pending_only=task.pending_only,
                unless_done_with=self.version_label(task.model_version) if task.model_version else None,
            )
        except PynamoDBException as exc:
            raise TransientError(f"DynamoDB lease update failed: {exc}") from exc
        return record if record is not None else self._why_not_leased(task, token)

    def _why_not_leased(self, task: ImageTask, token: str) -> Result:
        try:
            current = ImageModel.get(task.image_id, consistent_read=True)
        except DoesNotExist:
            raise RecordMissing(f"no image record {task.image_id}") from None
        except PynamoDBException as exc:
            raise TransientError(f"DynamoDB read failed: {exc}") from exc
        if task.source == "s3" and current.original_key != task.key:
            return Result(Outcome.IGNORED,
                          f"the event names {task.key}, the image's original is {current.original_key}")
        expires = current.lease_expires_at or 0
        if expires > time.time() and current.lease_owner != token:
            return Result(Outcome.DEFERRED, "another worker holds the image", retry_after=expires - time.time())
        if current.status in (ImageStatus.DONE.value, ImageStatus.FAILED.value):
            if current.labels_pending:  # the delivery that wrote the result died before the index
                self._sync_labels(current.id)
            return Result(Outcome.SKIPPED, f"already {current.status} for this upload / model version")
        return Result(Outcome.DEFERRED, "lease race", retry_after=1.0)  # condition changed meanwhile

    def version_label(self, version: str) -> str:
        return f"{self.settings.model_name} {version}"

    def extend_lease(self, image_id: str, token: str) -> bool:
        try:
            if image_records.extend_lease(image_id, token, self.lease_seconds):
                return True
            log.warning("lease not extended", image_id=image_id, error="another delivery holds the lease")
        except PynamoDBException as exc:
            log.warning("lease not extended", image_id=image_id, error=str(exc))
        return False

    def release(self, image_id: str, token: str, *, count_attempt: bool, error: str | None = None) -> None:
        """Give the lease back (transient failure, shutdown); `count_attempt=False` returns the try."""
        try:
            if not image_records.release_lease(image_id, token, count_attempt=count_attempt, error=error):
                log.info("lease not released", image_id=image_id, error="another delivery holds the lease")
        except PynamoDBException as exc:  # the lease expires by itself anyway
            log.info("lease not released", image_id=image_id, error=str(exc))

    # ---- the work ---------------------------------------------------------------------------
    def process(self, task: ImageTask, token: str, *, last_try: str | None = None) -> Result:
        """`last_try`: this message may not be retried again (its tries are used up; the text says
        so): a transient failure finishes the image with that text and the error instead."""
        timings: dict[str, float] = {}
        if task.source == "s3" and task.bucket != self.settings.originals_bucket:
            return Result(Outcome.IGNORED, f"the event is about the bucket {task.bucket}, not the originals bucket")
        with metrics.stage("lease", timings):
            leased = self.acquire(task, token)
        if isinstance(leased, Result):
            leased.timings = timings
            return leased
        record = leased
        if record.attempts > self.settings.worker_max_attempts:
            reason = f"gave up after {record.attempts - 1} attempts"
            if record.error:
                reason += f"; last error: {record.error}"
            result = self.finish_with_error(task, record, token, reason, None)
        else:
            try:
                result = self._run(task, record, token, timings)
            except PoisonInput as exc:
                result = self.finish_with_error(task, record, token, str(exc), getattr(exc, "etag", None))
            except PermanentFailure as exc:
                result = self.finish_with_error(task, record, token, str(exc), None)
                result.dead_letter = exc.dead_letter
            except TransientError as exc:
                if last_try is None:
                    raise
                result = self.finish_with_error(task, record, token, f"{last_try}; last error: {exc}", None)
                result.dead_letter = True
        result.timings = timings
        return result

    def finish_with_error(self, task: ImageTask, record: ImageModel, token: str, error: str,
                          etag: str | None) -> Result:
        """A re-run of an image that has a result keeps it (DONE, `error` says why the re-run
        failed); anything else ends FAILED."""
        if task.source == "reprocess" and record.processed_key and record.predictions:
            self._keep_result(record.id, token, f"re-run failed, the previous result is kept: {error}")
            return Result(Outcome.RERUN_FAILED, error)
        self.fail(record.id, token, error, etag)
        return Result(Outcome.FAILED, error)

    def _keep_result(self, image_id: str, token: str, error: str) -> None:
        self._final_write(image_id, "the re-run's error", lambda: image_records.keep_result(image_id, token, error))
        log.warning("re-run failed; earlier result kept", error=error)

    def _run(self, task: ImageTask, record: ImageModel, token: str, timings: dict[str, float]) -> Result:
        s = self.settings
        with metrics.stage("download", timings):
            # Never from where the message says: a forged event must not pick the bytes.
            original, etag = self._download(s.originals_bucket, record.original_key)
        with metrics.stage("decode", timings):
            try:
                decoded = render.decode(original, width=s.processed_width,
                                        classifier_short_side=s.classifier_input_short_side,
                                        max_pixels=s.max_image_pixels)
            except PoisonInput as exc:
                exc.etag = etag  # type: ignore[attr-defined]
                raise
        with metrics.stage("predict", timings):
            try:
                prediction = self.router.predict(
                    render.classifier_input(original, decoded, s.classifier_input_short_side), task)
            except PoisonInput as exc:
                exc.etag = etag  # type: ignore[attr-defined]
                raise
        lines = [render.format_prediction(lbl, p)
                 for lbl, p in zip(prediction.labels, prediction.probabilities, strict=True)]
        with metrics.stage("render", timings):
            rendered = render.render(decoded, lines, s.processed_width)
        out_key = data.processed_key(record.id, rendered.extension)
        with metrics.stage("upload", timings):
            try:
                self.s3.put_object(Bucket=s.processed_bucket, Key=out_key, Body=rendered.body,
                                   ContentType=rendered.content_type)
            except (ClientError, BotoCoreError) as exc:
                raise _s3_error(exc, "upload of the processed image failed", s.processed_bucket) from exc
        title = render.format_title(prediction.labels[0], prediction.probabilities[0], s.confidence_threshold)
        with metrics.stage("update", timings):
            try:
                self._final_write(record.id, "the result", lambda: image_records.complete(
                    record.id, token, title=title,
                    predictions=list(zip(prediction.labels, prediction.probabilities, strict=True)),
                    processed_key=out_key, model_version=prediction.version_label, source_etag=etag))
            except RecordMissing:
                self._drop_processed_copy(out_key)
                raise
        with metrics.stage("index", timings):
            self._sync_labels(record.id)
        log.info("image done", title=title, model_version=prediction.version_label, key=out_key,
                 width=rendered.width, height=rendered.height)
        return Result(Outcome.DONE, title)

    def _sync_labels(self, image_id: str) -> None:
        """The search index follows the record's new predictions (udagram/labels.py). On failure the
        message is retried; the record's `labels_pending` makes that delivery finish the index."""
        try:
            labels.sync_image(image_id, self.settings.confidence_threshold)
        except (PynamoDBException, labels.IndexBusy) as exc:
            raise TransientError(f"search index update failed: {exc}") from exc

    def _download(self, bucket: str, key: str) -> tuple[bytes, str | None]:
        """One GET whose headers are checked before the body is read: the size cap applies
        before any byte is downloaded (as a HEAD first would, one request fewer), and the read
        itself is capped too in case the server's length was wrong."""
        cap = self.settings.max_original_bytes
        try:
            response = self.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_not_found(exc):
                raise PoisonInput(f"the original upload {key} does not exist") from None
            raise _s3_error(exc, "download of the original failed", bucket) from exc
        except BotoCoreError as exc:
            raise _s3_error(exc, "download of the original failed", bucket) from exc
        body = response["Body"]
        size = response.get("ContentLength", 0)
        etag = normalise_etag(response.get("ETag"))
        try:
            if size == 0:
                raise _with_etag(PoisonInput("the file is empty (0 bytes)"), etag)
            if size > cap:
                raise _with_etag(PoisonInput(f"the file is {size} bytes, above the {cap} byte limit"), etag)
            try:
                payload = body.read(cap + 1)
            except BotoCoreError as exc:
                raise _s3_error(exc, "download of the original failed", bucket) from exc
        finally:
            body.close()
        if len(payload) > cap:
            raise _with_etag(PoisonInput(f"the file is larger than the {cap} byte limit"), etag)
        return payload, etag

    def _final_write(self, image_id: str, what: str, write: Callable[[], bool]) -> None:
        """`write`: an `image_records` update that ends a delivery's work, only while it still
        holds the lease. Refused: RecordMissing if the owner deleted the image meanwhile (the
        consumer then treats the original as an orphan upload), else LeaseLost (another worker
        took over)."""
        try:
            written = write()
        except PynamoDBException as exc:
            raise TransientError(f"DynamoDB update of {what} failed: {exc}") from exc
        if written:
            return
        if self._deleted(image_id):
            raise RecordMissing(f"image {image_id} was deleted while it was processed") from None
        raise LeaseLost(f"another worker took over the image before the write of {what}")

    @staticmethod
    def _deleted(image_id: str) -> bool:
        try:
            ImageModel.get(image_id, consistent_read=True, attributes_to_get=["id"])
            return False
        except DoesNotExist:
            return True
        except PynamoDBException:
            return False  # unknown: treat as taken over (an orphan object is harmless, a lost one is not)

    def _drop_processed_copy(self, out_key: str) -> None:
        """The owner deleted the image while it was processed: remove the processed copy just
        uploaded, which the API's delete could not know about."""
        try:
            self.s3.delete_object(Bucket=self.settings.processed_bucket, Key=out_key)
            log.info("image deleted during processing: processed copy removed", key=out_key)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not remove the processed copy of a deleted image", key=out_key, error=str(exc))

    def fail(self, image_id: str, token: str, error: str, etag: str | None) -> None:
        self._final_write(image_id, "FAILED", lambda: image_records.fail(image_id, token, error, etag))
        log.warning("image failed", error=error)


def _with_etag(exc: PoisonInput, etag: str | None) -> PoisonInput:
    exc.etag = etag  # type: ignore[attr-defined]
    return exc
