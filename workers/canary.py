"""Which model version classifies an image, with per-version metrics; the canary.

A canary sends a share of NEW uploads to a candidate version (`/predictions/classifier/<v>`)
while the rest stays on the default; the record's `model_version` says which version answered.
New uploads are S3 events and the reconciliation's re-queued uploads (`pendingOnly`); re-runs
keep the version they ask for (or the default). Whether an image is in the share is decided by a
hash of its id, so every delivery of one image goes the same way and a share of 0.1 is 10% of
images whatever the order they arrive in.

Configuration: `canary_version` / `canary_share` from the settings (environment), overridden while
`<data_dir>/canary.json` exists: `udagram model canary 2.0 --share 0.1` writes it, and a running
worker follows the file's changes from its next image on (it compares the file's mtime per image).

A canary version TorchServe does not serve (404) never fails an upload: that image is classified
by the default version and counted in `udagram_worker_canary_fallbacks_total`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from udagram.settings import Settings
from workers import metrics
from workers.errors import ModelVersionMissing
from workers.events import ImageTask
from workers.inference_client import Classifier, Prediction

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CanaryConfig:
    version: str | None
    share: float
    origin: str  # "environment" or the file it was read from

    @property
    def active(self) -> bool:
        return bool(self.version) and self.share > 0


class CanaryFileError(ValueError):
    """The canary file cannot be used; str() says why."""


def read_file(path: Path) -> CanaryConfig | None:
    """The file's setting, None when there is no file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CanaryFileError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CanaryFileError(f"{path}: expected a JSON object")
    version, share = doc.get("version"), doc.get("share", 0)
    if version is not None and (not isinstance(version, str) or not version):
        raise CanaryFileError(f"{path}: version must be a string or null")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise CanaryFileError(f"{path}: share must be a number from 0 to 1")
    return CanaryConfig(version, float(share), str(path))


def write_file(path: Path, version: str | None, share: float) -> None:
    """Atomically: a worker never reads half a file."""
    if not 0 <= share <= 1:
        raise CanaryFileError("share must be a number from 0 to 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps({"version": version, "share": share}) + "\n", encoding="utf-8")
    os.replace(partial, path)


def from_environment(settings: Settings) -> CanaryConfig:
    return CanaryConfig(settings.canary_version or None, settings.canary_share, "environment")


def effective(settings: Settings) -> CanaryConfig:
    """The file's setting while it exists, else the environment's (CanaryFileError: a bad file)."""
    return read_file(settings.canary_path) or from_environment(settings)


class CanarySource:
    """The current canary: the file while it exists (re-read when it changes), else the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.canary_path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._config = from_environment(settings)

    def current(self) -> CanaryConfig:
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._config = self._load()
            return self._config

    def _load(self) -> CanaryConfig:
        try:
            config = effective(self.settings)
        except CanaryFileError as exc:
            log.warning("canary file ignored: using the environment's canary settings", error=str(exc))
            return from_environment(self.settings)
        log.info("canary setting", version=config.version, share=config.share, origin=config.origin)
        return config


def in_share(image_id: str, share: float) -> bool:
    """Stable per image: the first 8 bytes of SHA-256(id) as a fraction of 2^64, below `share`."""
    point = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") / 2**64
    return point < share


def is_new_upload(task: ImageTask) -> bool:
    return task.model_version is None and (task.source == "s3" or task.pending_only)


class VersionRouter:
    """Predicts through the version a task should get, and counts every prediction by version."""

    def __init__(self, settings: Settings, classifier: Classifier) -> None:
        self.classifier = classifier
        self.canary = CanarySource(settings)

    def predict(self, image: bytes, task: ImageTask) -> Prediction:
        if is_new_upload(task):
            canary = self.canary.current()
            if canary.active and in_share(task.image_id, canary.share):
                try:
                    return self._predict(image, canary.version, "canary")
                except ModelVersionMissing as exc:
                    metrics.CANARY_FALLBACKS.labels(canary.version).inc()
                    log.warning("canary version not served: classified by the default version",
                                canary_version=canary.version, error=str(exc))
        return self._predict(image, task.model_version, "explicit" if task.model_version else "default")

    def _predict(self, image: bytes, version: str | None, route: str) -> Prediction:
        started = time.perf_counter()
        try:
            prediction = self.classifier.predict(image, version)
        except Exception as exc:
            metrics.PREDICTION_FAILURES.labels(version or "default", type(exc).__name__).inc()
            raise
        metrics.PREDICTIONS.labels(prediction.model_version, route).inc()
        metrics.PREDICTION_SECONDS.labels(prediction.model_version).observe(time.perf_counter() - started)
        return prediction
