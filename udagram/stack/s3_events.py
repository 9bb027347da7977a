"""The S3 event bridge: SeaweedFS filer events -> S3-shaped notifications on the uploads queue.

SeaweedFS has no S3 bucket-notification API; its filer POSTs each metadata event to a webhook
(see `udagram.stack.seaweedfs.notification_toml`). This small HTTP server receives them and, for
a new object under `originals/` in the originals bucket, sends the same record AWS S3 (and moto)
would send, so the worker has one code path:

    {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                  "s3": {"bucket": {"name": ...}, "object": {"key": <URL-encoded>, "size": ...,
                                                            "eTag": ..., "sequencer": ...}}, ...}]}

It answers 2xx only once the message is on the queue, so the filer retries (with back-off) when
SQS is down. Like S3's own notifications, delivery is at least once and the worker reconciles
anything lost on start. Run it with `python -m udagram.stack.s3_events` (the local stack does).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote_plus

import structlog

from udagram import resources
from udagram.aws import client
from udagram.resources import UPLOADS_PREFIX
from udagram.settings import Settings, get_settings

log = structlog.get_logger(__name__)

MAX_EVENT_BYTES = 1024 * 1024
CONFIGURATION_ID = "udagram-uploads"  # the Id of the notification configuration on AWS


def _b64text(value: Any) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode()
    except (TypeError, ValueError, binascii.Error, UnicodeDecodeError):
        return None


def _etag(entry: dict[str, Any]) -> str:
    """The object's S3 ETag (no quotes): SeaweedFS keeps it base64-encoded in `extended`."""
    extended = entry.get("extended") or {}
    etag = _b64text(extended.get("Seaweed-X-Amz-ETag"))
    if etag:
        return etag.strip('"')
    md5 = (entry.get("attributes") or {}).get("md5")
    try:
        return base64.b64decode(md5, validate=True).hex() if md5 else ""
    except (TypeError, ValueError, binascii.Error):
        return ""


def _content(entry: dict[str, Any] | None) -> tuple:
    """What identifies an object's bytes: an update that keeps it only changed metadata (tags)."""
    if not entry:
        return ()
    chunks = tuple(json.dumps(c.get("fid"), sort_keys=True) for c in entry.get("chunks") or [])
    attributes = entry.get("attributes") or {}
    return chunks, entry.get("content"), attributes.get("file_size"), _etag(entry)


def _modified_ns(entry: dict[str, Any]) -> int:
    stamps = [int(c.get("modified_ts_ns") or 0) for c in entry.get("chunks") or []]
    attributes = entry.get("attributes") or {}
    return max(stamps, default=0) or int(attributes.get("mtime") or 0) * 1_000_000_000


def s3_record(event: dict[str, Any], *, bucket: str, region: str, prefix: str = UPLOADS_PREFIX) -> dict | None:
    """The S3 notification record for a filer event, or None when S3 would send nothing for it.

    Object created (`create`), overwritten (`update` with new bytes) or moved into place
    (`rename`, as multipart completion may do) under `prefix` in `bucket` -> ObjectCreated.
    Directories, SeaweedFS's own files (`.uploads/` parts, `/buckets/.system`), other buckets,
    deletions and metadata-only updates -> None.
    """
    kind = event.get("event_type")
    message = event.get("message") or {}
    entry = message.get("new_entry")
    if kind not in ("create", "update", "rename") or not isinstance(entry, dict) or entry.get("is_directory"):
        return None
    parent = message.get("new_parent_path") or str(event.get("key", "")).rsplit("/", 1)[0]
    path = f"{parent.rstrip('/')}/{entry.get('name', '')}"
    root = f"/buckets/{bucket}/"
    if not path.startswith(root):
        return None
    key = path[len(root):]
    if not key.startswith(prefix) or key.startswith(".uploads/"):
        return None
    if kind == "update" and _content(message.get("old_entry")) == _content(entry):
        return None
    extended = entry.get("extended") or {}
    multipart = "X-Seaweedfs-Upload-Id" in extended
    ns = _modified_ns(entry)
    when = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    owner = _b64text(extended.get("Seaweed-X-Amz-Owner")) or "local"
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        # A browser's presigned POST is "ObjectCreated:Post" on AWS; the filer can't tell it apart.
        "eventName": "ObjectCreated:CompleteMultipartUpload" if multipart else "ObjectCreated:Put",
        "userIdentity": {"principalId": owner},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": f"{ns:016X}", "x-amz-id-2": "seaweedfs"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": CONFIGURATION_ID,
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": owner},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": quote_plus(key, safe="/"),  # as AWS: URL-encoded, spaces as '+', '/' kept
                "size": int((entry.get("attributes") or {}).get("file_size") or 0),
                "eTag": _etag(entry),
                "sequencer": f"{ns:016X}",  # orders events per key, as S3's does
            },
        },
    }


class Bridge:
    """Sends translated records to the uploads queue (the queue URL is looked up once it exists)."""

    def __init__(self, settings: Settings, sqs: Any = None) -> None:
        self.settings = settings
        self.sqs = sqs or client("sqs", settings)
        self._queue_url: str | None = None
        self._lock = threading.Lock()

    def queue_url(self) -> str:
        with self._lock:
            if self._queue_url is None:
                self._queue_url = self.sqs.get_queue_url(QueueName=self.settings.queue_name)["QueueUrl"]
            return self._queue_url

    def handle(self, event: dict[str, Any]) -> dict | None:
        """Forward one filer event; returns the record sent (None if the event is not an upload)."""
        record = s3_record(event, bucket=self.settings.originals_bucket, region=self.settings.aws_region)
        if record is None:
            log.debug("filer event ignored", event_type=event.get("event_type"), path=event.get("key"))
            return None
        body = json.dumps({"Records": [record]})
        try:
            self.sqs.send_message(QueueUrl=self.queue_url(), MessageBody=body)
        except Exception as exc:
            if not (resources.queue_missing(exc) and self.settings.create_resources):
                raise
            # The queue server restarted empty: re-create the queues (as `udagram up` does), resend.
            log.warning("uploads queue missing: re-creating it", queue=self.settings.queue_name)
            with self._lock:
                self._queue_url = resources.ensure_queues(self.settings, self.sqs)[0]
            self.sqs.send_message(QueueUrl=self.queue_url(), MessageBody=body)
        log.info("s3 event forwarded", key=record["s3"]["object"]["key"], etag=record["s3"]["object"]["eTag"])
        return record


def make_server(settings: Settings, bridge: Bridge | None = None) -> ThreadingHTTPServer:
    forwarder = bridge or Bridge(settings)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/healthz":
                self._answer(200, {"status": "ok"})
            else:
                self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/events":
                return self._answer(404, {"error": "not found"})
            if self.headers.get("Origin") is not None:
                # Browsers send Origin on every cross-site POST; the filer never does. Without
                # this, any web page the user opens could queue fake upload events on loopback.
                return self._answer(403, {"error": "requests from web pages are refused"})
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_EVENT_BYTES:
                return self._answer(400, {"error": f"event body must be 1..{MAX_EVENT_BYTES} bytes"})
            try:
                event = json.loads(self.rfile.read(length))
                if not isinstance(event, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                log.warning("filer event is not JSON", error=str(exc))
                return self._answer(400, {"error": f"event is not a JSON object: {exc}"})
            try:
                record = forwarder.handle(event)
            except Exception as exc:  # SQS down or queue missing: 503 makes the filer retry
                log.warning("could not forward s3 event", key=event.get("key"), error=str(exc))
                return self._answer(503, {"error": str(exc)})
            self._answer(200, {"forwarded": record is not None})

        def log_message(self, format: str, *args: Any) -> None:  # access log off: one line per event above
            pass

    server = ThreadingHTTPServer((settings.host, settings.s3_events_port), Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    import signal

    from udagram.logs import configure  # the project's structlog set-up (JSON lines on stderr)

    settings = get_settings()
    configure(settings)
    server = make_server(settings)
    # supervisord stops programs with SIGTERM: shut the server down cleanly and exit 0.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("s3 event bridge listening", host=settings.host, port=settings.s3_events_port,
             bucket=settings.originals_bucket, queue=settings.queue_name)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
