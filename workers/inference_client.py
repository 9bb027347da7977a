"""TorchServe client: `POST /predictions/<model>[/<version>]` with the image's bytes.

Transient faults are retried a few times with exponential back-off (tenacity), then raised:
connection refused, timeouts, 5xx, 408 and 429 as `ModelServerUnavailable`, a 404 for the default
model (not registered yet, e.g. while TorchServe starts) as `ModelNotRegistered`; the consumer's
circuit breaker decides from its own probe whether intake pauses (workers/consumer.py). A 404 for
a named version is `ModelVersionMissing`: permanent, never retried.
Another 4xx from the handler means the input itself is bad: `PoisonInput` with its message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from udagram.settings import Settings
from workers.errors import ModelNotRegistered, ModelServerUnavailable, ModelVersionMissing, PoisonInput


def _probe_jpeg() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(out, "JPEG")
    return out.getvalue()


# The circuit breaker's probe is a real prediction of a small grey image, since TorchServe's
# /ping can answer Healthy while its model workers are crashing.
PROBE_JPEG = _probe_jpeg()


class ServerState(Enum):
    UP = "up"  # predicts
    DOWN = "down"  # unreachable, timing out, 5xx, 408/429
    NO_MODEL = "no model"  # answers, but 404 for the default model (registering, or removed)


@dataclass(frozen=True)
class Prediction:
    labels: list[str]
    probabilities: list[float]
    model_name: str
    model_version: str

    @property
    def version_label(self) -> str:
        """What the record's `modelVersion` says: `<name> <version>` as TorchServe reports."""
        return f"{self.model_name} {self.model_version}".strip()


class Classifier:
    def __init__(self, settings: Settings, *, attempts: int = 3, max_connections: int | None = None):
        self.settings = settings
        self.base_url = settings.torchserve_inference_url.rstrip("/")
        n = max_connections or max(4, settings.worker_concurrency * 2)
        self.http = httpx.Client(
            timeout=httpx.Timeout(settings.torchserve_timeout_seconds, connect=3.0),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        )
        self.predict = retry(
            retry=retry_if_exception_type((ModelServerUnavailable, ModelNotRegistered)),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        )(self._predict_once)

    def close(self) -> None:
        self.http.close()

    def url(self, version: str | None = None) -> str:
        path = f"/predictions/{self.settings.model_name}"
        return self.base_url + path + (f"/{version}" if version else "")

    def _predict_once(self, image: bytes, version: str | None = None) -> Prediction:
        try:
            r = self.http.post(self.url(version), content=image,
                               headers={"Content-Type": "application/octet-stream"})
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise ModelServerUnavailable(f"TorchServe unreachable: {type(exc).__name__}: {exc}") from exc
        if r.status_code == 200:
            return self._parse(r)
        detail = _error_text(r)
        if r.status_code == 404 and version:
            raise ModelVersionMissing(f"TorchServe has no version {version} of the model "
                                      f"{self.settings.model_name}: {detail}")
        if r.status_code == 404:
            raise ModelNotRegistered(f"TorchServe has no model {self.settings.model_name} (yet): {detail}")
        if r.status_code in (408, 429) or r.status_code >= 500:
            raise ModelServerUnavailable(f"TorchServe answered {r.status_code}: {detail}")
        raise PoisonInput(f"the classifier refused the image: {detail}")

    def _parse(self, r: httpx.Response) -> Prediction:
        try:
            doc = r.json()
            labels = [str(x) for x in doc["top5"]]
            probs = [float(x) for x in doc["prob5"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelServerUnavailable(f"unexpected TorchServe answer: {r.text[:200]!r}") from exc
        if not labels or len(labels) != len(probs):
            raise ModelServerUnavailable(f"unexpected TorchServe answer: {r.text[:200]!r}")
        return Prediction(labels, probs, str(doc.get("model_name") or self.settings.model_name),
                          str(doc.get("model_version") or ""))

    def probe(self) -> ServerState:
        """One real prediction of a tiny image, no retries."""
        try:
            self._predict_once(PROBE_JPEG)
        except ModelServerUnavailable:
            return ServerState.DOWN
        except ModelNotRegistered:
            return ServerState.NO_MODEL
        except PoisonInput:
            pass  # it answers: serving
        return ServerState.UP


def _error_text(r: httpx.Response) -> str:
    try:
        doc = r.json()
        if isinstance(doc, dict):
            return str(doc.get("error") or doc.get("message") or doc)[:500]
    except ValueError:
        pass
    return r.text[:500] or r.reason_phrase
