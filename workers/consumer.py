"""The SQS consumer: long-poll, handle concurrently, heartbeat, back off, shut down cleanly.

- A poller thread long-polls (up to 10 messages, `worker_poll_seconds`) only while a handler
  slot is free, so at most `worker_concurrency` messages are in flight.
- A heartbeat thread extends, every third of the visibility timeout, the visibility of every
  message in flight and the DynamoDB lease of every image being processed.
- A message is deleted only after its records' final writes succeeded (or they needed no work).
- Transient faults: the lease is given back without counting the try and the message becomes
  visible again after an exponential back-off (ChangeMessageVisibility). Close to the queue's
  maxReceiveCount it is instead re-sent as a fresh message (with DelaySeconds) and the old one
  deleted, so SQS redrive does not dead-letter a good image while an outage lasts. The re-sent
  message carries its tries so far (the `tries` attribute): after `worker_max_message_tries` the
  image is finished with the error and the message moved to the DLQ, so nothing loops forever.
- TorchServe down opens a circuit breaker: receiving stops (so receive counts stop growing) until
  a probe prediction succeeds (every 1 s, backing off to 5 s); the messages that met the outage
  wait only `worker_retry_base_seconds`, so work resumes within seconds of TorchServe's return.
  It opens only if the probe confirms TorchServe is down: one message's own failure (a 5xx for
  that image, an unknown model version) never pauses intake for the others.
- Garbage bodies go to the DLQ at once, with the reason as a message attribute, and so do
  messages given up after `worker_max_message_tries` and permanent configuration failures (a
  missing bucket), after their image was finished with the error. SQS redrive handles messages
  whose worker keeps dying.
- An original with no image record (its owner deleted the image, then the still-valid upload URL
  was used) is looked at again after `worker_orphan_grace_seconds` (the event re-sent with that
  delay); if there is still no record, the object is deleted.
- Reconciliation (workers/reconcile.py) runs in its own thread: on start, every
  `worker_reconcile_interval_seconds`, and at once when the queue is found missing, which is
  re-created first (a local queue server restarted empty; with `create_resources` only).
- `stop()` (SIGTERM): stop receiving, give in-flight work `worker_shutdown_grace_seconds` to
  finish, then release what is left (visibility 0, lease given back) and return.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from udagram import resources
from udagram.aws import client, object_exists
from udagram.settings import Settings
from udagram.waiting import poll_until
from workers import metrics
from workers.errors import LeaseLost, ModelNotRegistered, ModelServerUnavailable, RecordMissing, TransientError
from workers.events import Garbage, Ignored, ImageTask, parse_body
from workers.inference_client import Classifier, ServerState
from workers.processor import Outcome, Processor
from workers.reconcile import reconcile

log = structlog.get_logger(__name__)


# Message attributes the worker sets on messages it sends back to the uploads queue.
TRIES_ATTRIBUTE = "tries"  # deliveries of the same body before this message (re-sends carry it)
ORPHAN_CHECK_ATTRIBUTE = "orphan_check"  # the delayed second look at an original with no record


@dataclass
class InFlight:
    receipt: str
    message_id: str
    receive_count: int
    tries_before: int = 0  # deliveries of earlier copies of this message (re-sends)
    orphan_check: bool = False
    leases: dict[str, str] = field(default_factory=dict)  # image_id -> token being held now
    done: bool = False
    released: bool = False  # handed back at shutdown: the handler must not touch it any more
    dead_letter_reasons: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, message: dict[str, Any]) -> InFlight:
        attributes = message.get("MessageAttributes") or {}
        tries = (attributes.get(TRIES_ATTRIBUTE) or {}).get("StringValue", "0")
        return cls(message["ReceiptHandle"], message["MessageId"],
                   int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                   tries_before=int(tries) if tries.isdigit() else 0,
                   orphan_check=ORPHAN_CHECK_ATTRIBUTE in attributes)

    @property
    def tries(self) -> int:
        """Deliveries of this body so far, this one included, across re-sends."""
        return self.tries_before + self.receive_count


class CircuitBreaker:
    """Open while TorchServe is down: the poller waits and probes with back-off.

    It opens only when its probe confirms TorchServe is down, so one message's own failure never
    pauses intake. A TorchServe that answers but lacks the default model (404) counts as down for
    `no_model_grace` seconds (it is registering it, e.g. after a restart: intake resumes as soon
    as it is ready), then as up: intake resumes and those messages back off on their own and end
    after their tries; re-runs through other versions flow.
    """

    def __init__(self, classifier: Classifier, base: float, cap: float, no_model_grace: float):
        self.classifier, self.base, self.cap, self.no_model_grace = classifier, base, cap, no_model_grace
        self._open_until: float | None = None
        self._interval = base
        self._lock = threading.Lock()
        self._no_model_since: float | None = None
        self.trips = 0  # times intake was paused (tests, logs)

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def _serving(self) -> bool:
        state = self.classifier.probe()
        if state is ServerState.NO_MODEL:
            self._no_model_since = self._no_model_since or time.monotonic()
            return time.monotonic() - self._no_model_since > self.no_model_grace
        self._no_model_since = None
        return state is ServerState.UP

    def trip_if_down(self, reason: str) -> bool:
        """Open unless the probe shows TorchServe serving; True if the circuit is open. A failure
        the probe does not reproduce was that one message's (e.g. a 5xx for its image)."""
        if self.is_open:
            return True
        if self._serving():
            log.info("model server answers the probe: the failure is this message's own", reason=reason)
            return False
        self.trip(reason)
        return True

    def trip(self, reason: str) -> None:
        with self._lock:
            if self._open_until is None:
                log.warning("model server unavailable: pausing intake", reason=reason)
                self.trips += 1
                self._interval = self.base
                self._open_until = time.monotonic() + self._interval
                metrics.CIRCUIT_OPEN.set(1)

    def wait_until_closed(self, stopping: threading.Event) -> None:
        while self._open_until is not None and not stopping.is_set():
            delay = self._open_until - time.monotonic()
            if delay > 0:
                stopping.wait(min(delay, 1.0))
                continue
            if self._serving():
                with self._lock:
                    self._open_until = None
                    metrics.CIRCUIT_OPEN.set(0)
                log.info("model server serving again: resuming intake")
                return
            with self._lock:
                self._interval = min(self._interval * 2, self.cap)
                self._open_until = time.monotonic() + self._interval


class Consumer:
    def __init__(self, settings: Settings, processor: Processor | None = None, sqs: Any = None,
                 reconcile_on_start: bool | None = None):
        self.settings = settings
        self.processor = processor or Processor(settings)
        self.sqs = sqs or client("sqs", settings, max_pool_connections=max(10, settings.worker_concurrency * 2))
        self.queue_url = self.sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
        self.dlq_url = self.sqs.get_queue_url(QueueName=settings.dead_letter_queue_name)["QueueUrl"]
        self.reconcile_on_start = (settings.worker_reconcile_on_start if reconcile_on_start is None
                                   else reconcile_on_start)
        self.reconcile_requested = threading.Event()
        self.queue_was_lost = False  # the next reconciliation pass takes uploads of any age
        # Which queue this is: another process (the S3 event bridge) may re-create a lost queue
        # before this worker notices it missing, so its creation time is compared after outages.
        self.queue_created = self._queue_created()
        self.queue_unsure = False
        self.concurrency = max(1, settings.worker_concurrency)
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="image")
        self.slots = threading.BoundedSemaphore(self.concurrency)
        self.in_flight: dict[str, InFlight] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        # Probing is one tiny prediction: cheap enough to do every few seconds.
        self.circuit = CircuitBreaker(self.processor.classifier, base=1.0, cap=5.0,
                                      no_model_grace=settings.worker_model_missing_grace_seconds)
        self.heartbeat_seconds = max(1.0, settings.worker_visibility_timeout_seconds / 3)
        self.handled = 0  # messages finished (deleted, released or dead-lettered): for tests/bench

    # ---- lifecycle ---------------------------------------------------------------------------
    def run(self) -> None:
        """Consume until `stop()`; then finish or release in-flight messages and return."""
        poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        heart = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        reconciler = threading.Thread(target=self._reconcile_loop, name="reconciler", daemon=True)
        poller.start()
        heart.start()
        reconciler.start()
        self.stopping.wait()
        self._shutdown(poller)

    def stop(self) -> None:
        self.stopping.set()
        self.reconcile_requested.set()  # wakes the reconciler so it can return

    def _shutdown(self, poller: threading.Thread) -> None:
        log.info("stopping: no new messages; finishing in-flight work", in_flight=len(self.in_flight))

        def drained() -> bool:
            with self.lock:
                return not self.in_flight

        poll_until(drained, bool, self.settings.worker_shutdown_grace_seconds, 0.1)
        with self.lock:
            left = list(self.in_flight.values())
            for item in left:
                item.released = True
        for item in left:  # still running: hand them back to the queue now
            for image_id, token in list(item.leases.items()):
                self.processor.release(image_id, token, count_attempt=False)
            self._change_visibility(item, 0)
            log.info("released in-flight message", message_id=item.message_id)
        poller.join(timeout=1.0)
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", released=len(left))

    # ---- receiving -------------------------------------------------------------------------
    def _free_slots(self) -> int:
        with self.lock:
            return self.concurrency - len(self.in_flight)

    def _poll_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.circuit.wait_until_closed(self.stopping)
                free = self._free_slots()
                if free <= 0:
                    time.sleep(0.02)
                    continue
                resp = self.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=min(10, free),
                    WaitTimeSeconds=self.settings.worker_poll_seconds,
                    AttributeNames=["ApproximateReceiveCount"],
                    MessageAttributeNames=["All"],
                )
            except (ClientError, BotoCoreError) as exc:
                if resources.queue_missing(exc):
                    self._queue_lost()
                    continue
                log.warning("receive failed; retrying", error=str(exc))
                self.queue_unsure = True
                self.stopping.wait(self.settings.worker_retry_base_seconds)
                continue
            if self.queue_unsure or not resp.get("Messages"):
                self.queue_unsure = False
                self.check_queue_identity()
            for message in resp.get("Messages", []):
                item = InFlight.of(message)
                if self.stopping.is_set():
                    self._change_visibility(item, 0)  # received while stopping: hand back at once
                    continue
                with self.lock:
                    self.in_flight[item.message_id] = item
                metrics.IN_FLIGHT.inc()
                self.pool.submit(self._handle_safely, message, item)

    def _queue_created(self) -> str | None:
        try:
            return self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["CreatedTimestamp"]
                                                 )["Attributes"].get("CreatedTimestamp")
        except (ClientError, BotoCoreError):  # e.g. no sqs:GetQueueAttributes permission: no check
            return None

    def check_queue_identity(self) -> bool:
        """After an outage or an empty receive: was the queue re-created meanwhile (its messages
        gone)? Then reconcile as for a lost queue. Returns whether it was."""
        created = self._queue_created()
        if not (created and self.queue_created and created != self.queue_created):
            self.queue_created = self.queue_created or created
            return False
        log.warning("the uploads queue was re-created elsewhere; reconciling the images its messages carried")
        self.queue_created = created
        self.queue_was_lost = True
        self.reconcile_requested.set()
        return True

    def _queue_lost(self) -> None:
        """The queue is gone, with its messages: re-create it, then reconcile what they carried."""
        log.error("the uploads queue does not exist", queue=self.settings.queue_name,
                  recreate=self.settings.create_resources)
        try:
            if self.settings.create_resources:
                self.queue_url, _, self.dlq_url = resources.ensure_queues(self.settings, self.sqs)
                self.queue_created = self._queue_created()
                log.warning("uploads queue re-created; reconciling the images its messages carried")
                self.queue_was_lost = True
                self.reconcile_requested.set()
                return
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not re-create the queue; retrying", error=str(exc))
        self.stopping.wait(self.settings.worker_retry_base_seconds)

    # ---- reconciliation ----------------------------------------------------------------------
    def _reconcile_loop(self) -> None:
        interval = self.settings.worker_reconcile_interval_seconds
        due = self.reconcile_on_start
        while not self.stopping.is_set():
            if due:
                queue_lost, self.queue_was_lost = self.queue_was_lost, False
                try:
                    reconcile(self.settings, s3=self.processor.s3, sqs=self.sqs, queue_lost=queue_lost)
                except Exception as exc:  # a safety net: the next pass tries again, as thoroughly
                    self.queue_was_lost = self.queue_was_lost or queue_lost
                    log.warning("reconciliation failed; next pass retries", error=f"{type(exc).__name__}: {exc}")
            self.reconcile_requested.wait(interval if interval > 0 else None)
            self.reconcile_requested.clear()
            due = True

    # ---- heartbeat ---------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.heartbeat_seconds):
            with self.lock:
                items = [i for i in self.in_flight.values() if not i.done]
            for start in range(0, len(items), 10):
                batch = items[start:start + 10]
                try:
                    self.sqs.change_message_visibility_batch(
                        QueueUrl=self.queue_url,
                        Entries=[{"Id": str(n), "ReceiptHandle": i.receipt,
                                  "VisibilityTimeout": self.settings.worker_visibility_timeout_seconds}
                                 for n, i in enumerate(batch)])
                except (ClientError, BotoCoreError) as exc:
                    log.warning("heartbeat failed", error=str(exc))
            for item in items:
                for image_id, token in list(item.leases.items()):
                    self.processor.extend_lease(image_id, token)

    # ---- handling ----------------------------------------------------------------------------
    def _handle_safely(self, message: dict[str, Any], item: InFlight) -> None:
        try:
            self._handle(message, item)
        except Exception:  # never lose the thread; the message reappears after its timeout
            log.exception("unexpected error handling message", message_id=item.message_id)
        finally:
            item.done = True
            with self.lock:
                self.in_flight.pop(item.message_id, None)
                self.handled += 1
            metrics.IN_FLIGHT.dec()

    def _handle(self, message: dict[str, Any], item: InFlight) -> None:
        items = parse_body(message.get("Body", ""))
        tasks = [i for i in items if isinstance(i, ImageTask)]
        for i in items:
            if isinstance(i, Ignored):
                metrics.SKIPPED.labels("ignored").inc()
                log.info("record acknowledged without work", reason=i.reason, message_id=item.message_id)
        garbage = [i.reason for i in items if isinstance(i, Garbage)]
        if garbage and not tasks:
            self._dead_letter(message, item, "; ".join(garbage))
            return
        for reason in garbage:
            log.warning("garbage record skipped", reason=reason, message_id=item.message_id)

        retry_after: float | None = None
        for task in tasks:
            wait = self._handle_task(task, message, item)
            if wait is not None:
                retry_after = max(retry_after or 0.0, wait)
            if self.stopping.is_set() and retry_after is None and task is not tasks[-1]:
                retry_after = 0.0  # shutting down between records: hand the rest back
                break
        with self.lock:
            if item.released:  # shutdown handed it back already; another worker owns it now
                return
        if item.dead_letter_reasons and not self._dead_letter(message, item, "; ".join(item.dead_letter_reasons),
                                                               copy_only=True):
            retry_after = max(retry_after or 0.0, self._backoff_seconds(item))  # not kept: try again later
        if retry_after is None:
            self._delete(item)
        else:
            self._back_off(message, item, retry_after)

    def _handle_task(self, task: ImageTask, message: dict[str, Any], item: InFlight) -> float | None:
        """Process one record; None when done with it, else seconds to wait before a retry."""
        token = self.processor.new_token()
        structlog.contextvars.bind_contextvars(image_id=task.image_id, source=task.source)
        item.leases[task.image_id] = token
        # Its last try: a transient failure now finishes the image and dead-letters the message.
        last_try = (f"gave up after {item.tries} tries" if item.tries >= self.settings.worker_max_message_tries
                    else None)
        try:
            result = self.processor.process(task, token, last_try=last_try)
            if result.dead_letter:
                item.dead_letter_reasons.append(f"image {task.image_id}: {result.detail}")
            if result.outcome is Outcome.DONE:
                metrics.PROCESSED.inc()
            elif result.outcome is Outcome.FAILED:
                metrics.FAILED.inc()
            elif result.outcome is Outcome.RERUN_FAILED:
                metrics.RERUNS_FAILED.inc()
            elif result.outcome is Outcome.SKIPPED:
                metrics.SKIPPED.labels("up_to_date").inc()
                log.info("nothing to do", reason=result.detail)
            elif result.outcome is Outcome.IGNORED:
                metrics.SKIPPED.labels("not_the_original").inc()
                log.warning("event does not name the image's original: acknowledged, nothing changed",
                            reason=result.detail, bucket=task.bucket, key=task.key)
            else:  # DEFERRED: another worker holds it; look again once its lease ends
                metrics.RETRIES.labels("leased_elsewhere").inc()
                log.info("image busy elsewhere; retrying later", retry_after=round(result.retry_after, 1))
                return max(1.0, result.retry_after + 1.0)
            return None
        except LeaseLost as exc:
            log.info("lease lost; the other delivery finishes the image", reason=str(exc))
            return None
        except RecordMissing:
            return self._orphan_upload(task, message, item, last_try)
        except TransientError as exc:
            self.processor.release(task.image_id, token, count_attempt=False)
            server_side = isinstance(exc, (ModelServerUnavailable, ModelNotRegistered))
            if not last_try and server_side and self.circuit.trip_if_down(str(exc)):
                metrics.RETRIES.labels("model_server").inc()
                # No exponential back-off here: while the circuit is open nothing is received, so
                # the message just waits, visible, and flows again soon after TorchServe's return.
                return float(self.settings.worker_retry_base_seconds)
            metrics.RETRIES.labels("transient").inc()
            # On the last try the record could not be finished either (e.g. DynamoDB down).
            return self._retry_later(task, item, last_try, str(exc))
        except Exception as exc:  # a bug or an unclassified fault: counts against the image
            log.exception("unexpected failure; retrying with back-off")
            self.processor.release(task.image_id, token, count_attempt=True,
                                   error=f"{type(exc).__name__}: {exc}")
            metrics.RETRIES.labels("unexpected").inc()
            return self._retry_later(task, item, last_try, f"{type(exc).__name__}: {exc}")
        finally:
            item.leases.pop(task.image_id, None)
            structlog.contextvars.unbind_contextvars("image_id", "source")

    def _retry_later(self, task: ImageTask, item: InFlight, last_try: str | None, error: str) -> float | None:
        """Seconds to back off before the next try; on the last try, None and the message is
        dead-lettered with the error instead."""
        if last_try:
            item.dead_letter_reasons.append(f"image {task.image_id}: {last_try}; last error: {error}")
            return None
        log.warning("transient failure; retrying with back-off", error=error, tries=item.tries)
        return self._backoff_seconds(item)

    def _backoff_seconds(self, item: InFlight) -> float:
        s = self.settings
        return min(s.worker_retry_max_seconds, s.worker_retry_base_seconds * 2 ** max(0, item.tries - 1))

    # ---- uploads without a record -----------------------------------------------------------
    def _orphan_upload(self, task: ImageTask, message: dict[str, Any], item: InFlight,
                       last_try: str | None) -> float | None:
        """No image record: the owner deleted the image (a re-run's, or an S3 event whose object is
        gone too: acknowledged), or an upload arrived after the delete through its still-valid URL.
        Such an original is looked at again after the grace and, still without record, deleted:
        nothing keeps an upload nobody can see. None when done, else seconds before a retry."""
        if task.source != "s3" or not task.key:
            log.info("image record gone (deleted): acknowledged")
            return None
        bucket = self.settings.originals_bucket  # task.bucket was checked to be this one
        try:
            exists = object_exists(self.processor.s3, bucket, task.key)
        except (ClientError, BotoCoreError) as exc:
            return self._retry_later(task, item, last_try, f"could not look at its original without record: {exc}")
        if not exists:
            log.info("image record and original are gone (deleted): acknowledged")
            return None
        if not item.orphan_check:
            grace = self.settings.worker_orphan_grace_seconds
            try:
                self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=message["Body"], DelaySeconds=grace,
                                      MessageAttributes={ORPHAN_CHECK_ATTRIBUTE: {"DataType": "String",
                                                                                  "StringValue": "1"}})
            except (ClientError, BotoCoreError) as exc:
                return self._retry_later(task, item, last_try, f"could not re-queue the look at its original: {exc}")
            log.info("original without image record: looking again after the grace", key=task.key, grace=grace)
            return None
        try:
            self.processor.s3.delete_object(Bucket=bucket, Key=task.key)
        except (ClientError, BotoCoreError) as exc:  # e.g. no s3:DeleteObject permission
            item.dead_letter_reasons.append(f"no image record {task.image_id}; the original {task.key} "
                                            f"could not be deleted: {exc}")
            return None
        metrics.SKIPPED.labels("orphan_deleted").inc()
        log.warning("original without image record deleted", key=task.key)
        return None

    # ---- message actions ---------------------------------------------------------------------
    def _delete(self, item: InFlight) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=item.receipt)
        except (ClientError, BotoCoreError) as exc:
            log.warning("delete failed; the message will be seen again (idempotent)", error=str(exc))

    def _change_visibility(self, item: InFlight, seconds: float) -> None:
        try:
            self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=item.receipt,
                                               VisibilityTimeout=int(min(43200, max(0, seconds))))
        except (ClientError, BotoCoreError) as exc:
            log.warning("visibility change failed", error=str(exc))

    def _back_off(self, message: dict[str, Any], item: InFlight, seconds: float) -> None:
        if self.stopping.is_set():
            seconds = 0  # another worker (or our restart) takes it now
        if item.receive_count >= self.settings.queue_max_receive_count - 1:
            # Receives count towards the DLQ redrive: re-send a fresh copy (count 1) carrying the
            # tries so far (worker_max_message_tries bounds them), then delete.
            try:
                self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=message["Body"],
                                      DelaySeconds=int(min(900, seconds)),
                                      MessageAttributes={TRIES_ATTRIBUTE: {"DataType": "Number",
                                                                           "StringValue": str(item.tries)}})
                self._delete(item)
                log.info("message re-sent to reset its receive count", delay=int(min(900, seconds)),
                         tries=item.tries)
                return
            except (ClientError, BotoCoreError) as exc:
                log.warning("re-send failed; backing off in place", error=str(exc))
        self._change_visibility(item, seconds)

    def _dead_letter(self, message: dict[str, Any], item: InFlight, reason: str, copy_only: bool = False) -> bool:
        """Move a message to the DLQ with the reason (sent first, then deleted: nothing lost);
        `copy_only` leaves deleting to the caller. False if the DLQ refused it."""
        try:
            self.sqs.send_message(
                QueueUrl=self.dlq_url, MessageBody=message.get("Body", "") or "(empty body)",
                MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:1000]},
                                   "source_message_id": {"DataType": "String", "StringValue": item.message_id},
                                   TRIES_ATTRIBUTE: {"DataType": "Number", "StringValue": str(item.tries)}})
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not move the message to the DLQ; leaving it for redrive", error=str(exc))
            return False
        metrics.DEAD_LETTERED.inc()
        log.warning("message moved to the dead-letter queue", reason=reason, message_id=item.message_id)
        if not copy_only:
            self._delete(item)
        return True
