"""TorchServe handler: an image in, the top 5 classes out.

Copied into every .mar archive, so it depends on nothing but the stdlib, torch, PIL and numpy
(no project imports; onnxruntime only for ONNX archives, imported when one loads). Everything
model-specific (runtime, input size, resize, interpolation, normalisation, thread count, pixel
limit) comes from `model_meta.json` inside the archive; the class names from `index_to_name.json`.

Per request of a batch the answer is
    {"top5": [...], "prob5": [...], "model_name": "classifier", "model_version": "1.0"}
or, for that request alone, a 4xx with {"error": "...", "code": "..."}: one bad image never
fails its neighbours, and nothing here lets an input kill the worker process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

META_FILE = "model_meta.json"
LABELS_FILE = "index_to_name.json"
# How an archive's model file runs (model_meta.json "runtime"): ONNX Runtime for model.onnx,
# TorchScript (frozen and optimised at load) for model.pt.
RUNTIMES = ("onnx", "torchscript")
TOP_K = 5
# Only what uploads may be (the API allows these types); fewer decoders, less attack surface.
# (Camera MPO files open through the JPEG opener.)
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
Image.init()  # registers every plugin: Image.open(formats=...) cannot name unloaded ones
MAX_ASPECT_RATIO = 4.0  # longer strips are centre-cropped first (the model only sees the centre)
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000: any phone photo passes, a 30000x30000 bomb does not

INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


REASONS = {400: "Bad Request", 413: "Payload Too Large"}


class ImageInputError(Exception):
    """A request whose payload cannot become a model input; answered with `status` alone."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def as_response(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


def _per_channel(values: Any) -> tuple[float, float, float]:
    """model_meta.json's mean or std: one value for each of R, G, B."""
    red, green, blue = (float(v) for v in values)
    return red, green, blue


@dataclass(frozen=True)
class Preprocessing:
    """How an archive's model wants its pixels (read from model_meta.json)."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Preprocessing:
        return cls(
            input_size=int(meta["input_size"]),
            resize_size=int(meta["resize_size"]),
            interpolation=str(meta.get("interpolation", "bicubic")),
            mean=_per_channel(meta["mean"]),
            std=_per_channel(meta["std"]),
            max_pixels=int(meta.get("max_pixels", DEFAULT_MAX_PIXELS)),
        )


# --- decoding -----------------------------------------------------------------------------------


def payload_bytes(row: Any) -> bytes:
    """The raw image bytes of one TorchServe request row (`data` or `body`)."""
    payload = row.get("data", row.get("body")) if isinstance(row, dict) else row
    if payload is None and isinstance(row, dict):
        # multipart upload under another field name (curl -F file=@cat.jpg)
        payload = next((v for v in row.values() if isinstance(v, (bytes, bytearray)) and v), None)
    if payload is None or (isinstance(payload, (bytes, bytearray, str)) and len(payload) == 0):
        raise ImageInputError(
            400,
            "empty_input",
            "the request body is empty (form-encoded bodies arrive empty); "
            "send the image bytes with Content-Type: application/octet-stream",
        )
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    # JSON or text bodies arrive already parsed: they are not images.
    raise ImageInputError(
        400,
        "unsupported_input",
        "expected raw image bytes (Content-Type: application/octet-stream or image/*)",
    )


def decode_image(data: bytes, prep: Preprocessing) -> Image.Image:
    """Bytes -> upright 8-bit RGB PIL image (L if grey: `to_model_mode`), refusing decompression
    bombs before decoding pixels."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageInputError(400, "undecodable_image", "not a JPEG, PNG, WebP, GIF or BMP image") from exc
    except Image.DecompressionBombError as exc:  # Pillow's own check, at twice its pixel limit
        raise _too_large(exc) from exc
    width, height = image.size
    # The header's size is known before any pixel is decoded: refuse here, not after allocating.
    if width * height > prep.max_pixels:
        raise ImageInputError(
            413,
            "image_too_large",
            f"image is {width}x{height} = {width * height} pixels; the limit is {prep.max_pixels}",
        )
    if image.format in ("JPEG", "MPO"):
        # Let libjpeg decode at a reduced scale when the image is much bigger than we need.
        image.draft("RGB", (prep.resize_size, prep.resize_size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.seek(0)  # GIF / animated WebP: the first frame
            image.load()
            return to_model_mode(upright(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(exc) from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        # Truncated or corrupt data only shows up while decoding.
        raise ImageInputError(400, "undecodable_image", f"the image data is corrupt: {exc}") from exc


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the picture as stored, not refused."""
    try:
        # In place: otherwise an already upright picture is copied whole.
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 - malformed metadata in an otherwise fine image
        logger.warning("ignoring unreadable EXIF orientation", exc_info=True)
    return image


def _too_large(exc: Exception) -> ImageInputError:
    return ImageInputError(413, "image_too_large", f"image refused as a decompression bomb: {exc}")


def to_model_mode(image: Image.Image) -> Image.Image:
    """8-bit RGB, but a grey (L) picture stays one band: its R, G and B would be equal, and one
    band resizes in a third of the time; `to_tensor` repeats it. The tensor is the same either way."""
    return image if image.mode == "L" else to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Transparency is flattened onto white (what a viewer shows)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, LAB, HSV, 1


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's own I;16 -> RGB conversion clips at 255 (a white picture); scale instead.
    pixels = np.asarray(image, dtype=np.float64)
    peak = float(pixels.max()) if pixels.size else 0.0
    if image.mode.startswith("I;16") or 255 < peak <= 65535:
        pixels = pixels / 257.0
    elif peak > 65535:
        low = float(pixels.min())
        pixels = (pixels - low) * (255.0 / max(peak - low, 1e-12))
    gray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")  # uint8 2-D: mode L


# --- geometry and normalisation ----------------------------------------------------------------


def resize_and_crop(image: Image.Image, prep: Preprocessing) -> Image.Image:
    """Resize the short side to resize_size, then centre-crop input_size (torchvision's rounding)."""
    image = limit_aspect_ratio(image)
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short = prep.resize_size
    new_long = max(1, int(new_short * long / short))
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, INTERPOLATIONS[prep.interpolation])
    crop = prep.input_size
    left = int(round((size[0] - crop) / 2.0))
    top = int(round((size[1] - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def limit_aspect_ratio(image: Image.Image) -> Image.Image:
    """Centre-crop the long side to MAX_ASPECT_RATIO x the short side.

    Otherwise a 1 x 10,000,000 strip (legal under the pixel limit) would be resized to
    292 x 2.9 billion pixels before the centre crop. Ordinary photos are untouched."""
    width, height = image.size
    if max(width, height) <= MAX_ASPECT_RATIO * min(width, height):
        return image
    keep = max(1, int(MAX_ASPECT_RATIO * min(width, height)))
    if width > height:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))


def to_tensor(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """RGB or L image -> normalised CHW float tensor (3 channels either way)."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    pixels = (pixels.expand(3, *pixels.shape) if pixels.ndim == 2 else pixels.permute(2, 0, 1)).float()
    mean = torch.tensor(prep.mean).view(3, 1, 1) * 255.0
    std = torch.tensor(prep.std).view(3, 1, 1) * 255.0
    return (pixels - mean) / std


def image_to_input(data: bytes, prep: Preprocessing) -> torch.Tensor:
    """The whole per-image preprocessing: bytes -> model input (3 x size x size)."""
    return to_tensor(resize_and_crop(decode_image(data, prep), prep), prep)


# --- the handler -------------------------------------------------------------------------------


@dataclass
class Batch:
    """A TorchServe batch after preprocessing: inputs of the good requests, errors of the others."""

    size: int
    inputs: torch.Tensor | None = None  # stacked inputs, in the order of `good`
    good: list[int] = field(default_factory=list)
    errors: dict[int, ImageInputError] = field(default_factory=dict)
    probabilities: torch.Tensor | None = None


def load_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        mapping = json.load(f)
    return [mapping[str(i)] for i in range(len(mapping))]


@contextmanager
def jit_warnings_silenced() -> Iterator[None]:
    # TorchScript is deprecated upstream but still the fastest CPU path here; keep logs readable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
        yield


def optimise_for_cpu(model: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    # Freezing folds weights into the graph and optimize_for_inference fuses conv+bn and picks
    # oneDNN kernels (~1.4x over eager here); the result cannot be saved, hence done at load.
    with jit_warnings_silenced():
        return torch.jit.optimize_for_inference(torch.jit.freeze(model.eval()))


# The forward pass of an archive's model: a float32 batch (N x 3 x size x size) -> logits (N x classes).
Runner = Callable[[torch.Tensor], torch.Tensor]


def worker_threads(meta: dict[str, Any]) -> int:
    """Intra-op threads per worker from model_meta.json (0 or absent: every core it may use)."""
    threads = int(meta.get("threads", 0))
    if threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return threads


def load_runner(model_file: str, meta: dict[str, Any]) -> Runner:
    """Load a model file the way model_meta.json says; the archive build verifies exactly this."""
    runtime = meta.get("runtime", "torchscript")
    if runtime == "onnx":
        return _onnx_runner(model_file, worker_threads(meta))
    if runtime == "torchscript":
        with jit_warnings_silenced():
            model = torch.jit.load(model_file, map_location="cpu")
        return optimise_for_cpu(model) if meta.get("optimize", True) else model.eval()
    raise ValueError(f"unknown runtime {runtime!r} in {META_FILE}; expected one of {', '.join(RUNTIMES)}")


def _onnx_runner(model_file: str, threads: int) -> Runner:
    import onnxruntime as ort  # only ONNX archives need it

    options = ort.SessionOptions()
    # One worker per core with one intra-op thread each (as for TorchScript): no thread pool to
    # synchronise, and the workers never compete for a core.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its optimiser notes are not the operator's business
    session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        pixels = batch.detach().to(torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {input_name: pixels})[0])

    return run


class ImageClassifier(BaseHandler):
    """TorchServe handler for an image classifier (ONNX or TorchScript) described by model_meta.json."""

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = properties.get("model_dir")
        self.manifest = context.manifest
        with open(os.path.join(model_dir, META_FILE), encoding="utf-8") as f:
            self.meta: dict[str, Any] = json.load(f)
        self.prep = Preprocessing.from_meta(self.meta)
        Image.MAX_IMAGE_PIXELS = self.prep.max_pixels  # Pillow's own guard for late-known sizes
        self._set_threads(worker_threads(self.meta))
        # Pillow releases the GIL while decoding and resizing: a worker with several threads decodes
        # a batch's images in parallel. With one thread (one worker per core), handing each image to
        # a pool thread is pure overhead: they are decoded in the worker's own thread.
        threads = torch.get_num_threads()
        self._decoders = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None
        self.device = torch.device("cpu")
        model_file = os.path.join(model_dir, self.manifest["model"]["serializedFile"])
        self.model: Runner = load_runner(model_file, self.meta)
        self.labels = load_labels(os.path.join(model_dir, LABELS_FILE))
        self.model_name = self.manifest["model"].get("modelName", "")
        self.model_version = self.manifest["model"].get("modelVersion", "")
        self._warm_up(int(self.meta.get("warmup_batch_size", 1)))
        self.initialized = True
        logger.info(
            "model %s version %s ready: %s on %s, %d classes, %d threads",
            self.model_name,
            self.model_version,
            self.meta.get("arch"),
            self.meta.get("runtime", "torchscript"),
            len(self.labels),
            torch.get_num_threads(),
        )

    @staticmethod
    def _set_threads(threads: int) -> None:
        # One worker per core on a small machine: more intra-op threads than cores thrash.
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set once in this process
            pass

    def _warm_up(self, largest_batch: int) -> None:
        # The JIT profiles the first calls per input shape (= batch size); pay that at load,
        # not on a user's request.
        size = self.prep.input_size
        with torch.inference_mode():
            for batch in range(1, max(1, largest_batch) + 1):
                for _ in range(2):
                    self.model(torch.zeros(batch, 3, size, size))

    def handle(self, data: list[Any], context: Any) -> list[dict[str, Any]]:
        started = time.perf_counter()
        self.context = context
        batch = self.preprocess(data)
        batch = self.inference(batch)
        responses = self.postprocess(batch)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if context is not None and getattr(context, "metrics", None) is not None:
            context.metrics.add_time("HandlerTime", round(elapsed_ms, 2), None, "ms")
        # One line per batch in model_log.log: shows batching at work and which inputs failed.
        logger.info(
            "batch size=%d predicted=%d refused=%d codes=%s in %.1f ms",
            batch.size,
            len(batch.good),
            len(batch.errors),
            ",".join(sorted({e.code for e in batch.errors.values()})) or "-",
            elapsed_ms,
        )
        return responses

    def preprocess(self, data: list[Any]) -> Batch:
        batch = Batch(size=len(data))
        prepared = (list(self._decoders.map(self._prepare, range(len(data)), data))
                    if self._decoders is not None and len(data) > 1
                    else [self._prepare(index, row) for index, row in enumerate(data)])
        tensors: list[torch.Tensor] = []
        for index, outcome in enumerate(prepared):
            if isinstance(outcome, ImageInputError):
                batch.errors[index] = outcome
            else:
                tensors.append(outcome)
                batch.good.append(index)
        if tensors:
            batch.inputs = torch.stack(tensors)
        return batch

    def _prepare(self, index: int, row: Any) -> torch.Tensor | ImageInputError:
        try:
            return image_to_input(payload_bytes(row), self.prep)
        except ImageInputError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not fail the whole batch
            logger.exception("unexpected error decoding request %d", index)
            return ImageInputError(400, "undecodable_image", f"cannot decode the image: {exc}")

    def inference(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:
        if batch.inputs is not None:
            with torch.inference_mode():
                logits = self.model(batch.inputs)
            batch.probabilities = torch.softmax(logits.float(), dim=1)
        return batch

    def postprocess(self, batch: Batch) -> list[dict[str, Any]]:
        responses: list[dict[str, Any]] = [{} for _ in range(batch.size)]
        if batch.probabilities is not None:
            k = min(TOP_K, batch.probabilities.shape[1])
            probs, indices = torch.topk(batch.probabilities, k, dim=1)  # sorted, descending
            for row, index in enumerate(batch.good):
                responses[index] = {
                    "top5": [self.labels[i] for i in indices[row].tolist()],
                    "prob5": probs[row].tolist(),
                    "model_name": self.model_name,
                    "model_version": self.model_version,
                }
        for index, error in batch.errors.items():
            responses[index] = error.as_response()
            if self.context is not None:
                self.context.set_response_status(error.status, REASONS[error.status], idx=index)
        if self.context is not None:
            for index in range(batch.size):
                self.context.set_response_content_type(index, "application/json")
        return responses


# TorchServe's entry point. A module-level function, because TorchServe only picks a handler class
# by itself when the module defines exactly one class.
_service = ImageClassifier()


def handle(data: list[Any] | None, context: Any) -> list[dict[str, Any]] | None:
    if not _service.initialized:
        _service.initialize(context)
    if data is None:  # TorchServe's initialisation call
        return None
    return _service.handle(data, context)
