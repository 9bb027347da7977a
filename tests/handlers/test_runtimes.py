"""Runtimes of an archive: ONNX Runtime (the default) and TorchScript, the build's verification on
the reference photos, the handler's choice from model_meta.json, and both served for real."""

from __future__ import annotations

import copy
import json
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from handlers import archive as archive_module
from handlers.archive import (
    MAX_PROBABILITY_DRIFT,
    ArchiveError,
    archive_info,
    build_archive,
    lite2_model,
    reference_photos,
    verify_runner,
)
from handlers.cli import model_app
from handlers.image_classifier import ImageClassifier, Preprocessing, image_to_input
from handlers.server import TorchServeProcess
from tests.fixtures.torchserve import minor_faults, worker_pids
from tests.handlers.images import chelsea_jpeg, coffee_jpeg
from tests.handlers.test_serving import assert_prediction, predict
from udagram.model_management import ManagementClient, stage_archive


@pytest.fixture(scope="module")
def lite2() -> tuple[nn.Module, object, list[str]]:
    return lite2_model()


def test_the_default_archive_runs_on_onnx_runtime_verified_on_the_reference_photos(classifier_archive: Path) -> None:
    info = archive_info(classifier_archive)
    meta = info["meta"]
    assert meta["runtime"] == "onnx"
    assert info["manifest"]["model"]["serializedFile"] == "model.onnx"
    with zipfile.ZipFile(classifier_archive) as mar:
        assert "model.onnx" in mar.namelist() and "model.pt" not in mar.namelist()
    checked = meta["verification"]
    assert checked["photos"] == len(reference_photos()) == 13
    assert 0.0 <= checked["max_abs_dp"] <= MAX_PROBABILITY_DRIFT
    assert checked["rejected"] == {}


def test_a_torchscript_archive_carries_the_trace(torchscript_archive: Path) -> None:
    info = archive_info(torchscript_archive)
    assert info["meta"]["runtime"] == "torchscript"
    assert info["manifest"]["model"]["serializedFile"] == "model.pt"
    assert info["meta"]["verification"]["photos"] == 13


# --- verification ------------------------------------------------------------------------------


def _probabilities(rows: int = 4, classes: int = 10) -> torch.Tensor:
    return torch.softmax(torch.randn(rows, classes, generator=torch.Generator().manual_seed(1)) * 3, dim=1)


def test_verification_passes_a_faithful_runner_and_names_the_photos_a_wrong_one_changes() -> None:
    expected = _probabilities()
    inputs = torch.log(expected)  # a runner returning its input as logits reproduces `expected`
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert verify_runner(expected, lambda x: x, inputs, names, batch_size=2) < 1e-6

    def swaps_two_classes_of_photo_c(batch: torch.Tensor) -> torch.Tensor:
        out = batch.clone()
        if torch.equal(batch[-1], inputs[2]) or torch.equal(batch[0], inputs[2]):
            row = 0 if torch.equal(batch[0], inputs[2]) else batch.shape[0] - 1
            top = out[row].argsort(descending=True)
            out[row, top[0]], out[row, top[1]] = batch[row, top[1]], batch[row, top[0]]
        return out

    with pytest.raises(ArchiveError, match=r"top 5 differs on 1 of 4 reference photos: c\.jpg"):
        verify_runner(expected, swaps_two_classes_of_photo_c, inputs, names, batch_size=1)
    with pytest.raises(ArchiveError, match="max"):
        verify_runner(expected, lambda x: torch.full_like(x, float("nan")), inputs, names, batch_size=4)


def test_verification_refuses_probabilities_that_drift_past_the_limit() -> None:
    expected = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.04, 0.01]])
    drifted = torch.tensor([[0.49, 0.21, 0.15, 0.1, 0.04, 0.01]])  # same order, |dp| = 0.01
    with pytest.raises(ArchiveError, match=r"max \|Δp\| = 1\.00e-02"):
        verify_runner(expected, lambda x: torch.log(drifted), torch.zeros(1, 3, 2, 2), ["x.jpg"], batch_size=1)


def _perturbed(model: nn.Module) -> nn.Module:
    """The model with its classifier rows rolled by one: every class takes its neighbour's score."""
    broken = copy.deepcopy(model)
    head = [m for m in broken.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.copy_(head.weight.roll(1, dims=0))
        head.bias.copy_(head.bias.roll(1, dims=0))
    return broken


def test_a_build_whose_onnx_export_changes_predictions_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = archive_module.export_onnx
    monkeypatch.setitem(archive_module.EXPORTERS, "onnx",
                        lambda model, size, path: real_export(_perturbed(model), size, path))
    store = tmp_path / "store"
    result = CliRunner().invoke(model_app, ["build", "--store", str(store), "--runtime", "onnx", "--version", "9.0"])
    assert result.exit_code == 1, result.output
    assert "changes predictions" in result.output and "of 13 reference photos" in result.output
    assert not list(store.glob("*.mar")) and not list(store.glob(".*partial"))


def test_the_default_build_falls_back_to_torchscript_when_onnx_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_onnx(model: nn.Module, size: int, path: Path) -> None:
        raise ArchiveError("cannot export to ONNX: an operator this exporter does not know")

    monkeypatch.setitem(archive_module.EXPORTERS, "onnx", no_onnx)
    store = tmp_path / "store"
    result = CliRunner().invoke(model_app, ["build", "--store", str(store), "--version", "3.0"])
    assert result.exit_code == 0, result.output
    assert "version 3.0, torchscript" in result.output
    assert "not onnx: cannot export to ONNX: an operator this exporter does not know" in result.output
    meta = archive_info(store / "classifier-3.0.mar")["meta"]
    assert meta["runtime"] == "torchscript"
    assert "onnx" in meta["verification"]["rejected"]


def test_an_unknown_runtime_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="unknown runtime 'tensorrt'; choose one of onnx, torchscript"):
        build_archive(tmp_path, runtime="tensorrt")  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


# --- the handler picks the runtime from model_meta.json ---------------------------------------


@pytest.fixture
def restore_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # the handler sets the worker's own; keep this process's
    yield
    torch.set_num_threads(threads)


def _unpacked(archive: Path, into: Path) -> tuple[SimpleNamespace, dict]:
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(into)
    manifest = json.loads((into / "MAR-INF" / "MANIFEST.json").read_text())
    return SimpleNamespace(system_properties={"model_dir": str(into)}, manifest=manifest), manifest


def _loaded(archive: Path, into: Path) -> ImageClassifier:
    context, _ = _unpacked(archive, into)
    handler = ImageClassifier()
    handler.initialize(context)
    return handler


@pytest.mark.usefixtures("restore_torch_threads")
def test_the_handler_loads_the_runtime_model_meta_names(
    classifier_archive: Path, torchscript_archive: Path, tmp_path: Path
) -> None:
    onnx = _loaded(classifier_archive, tmp_path / "onnx")
    torchscript = _loaded(torchscript_archive, tmp_path / "torchscript")
    assert not isinstance(onnx.model, torch.jit.ScriptModule)  # an ONNX Runtime session's runner
    assert isinstance(torchscript.model, torch.jit.ScriptModule)
    answers = [h.handle([{"body": chelsea_jpeg()}, {"body": coffee_jpeg()}], None) for h in (onnx, torchscript)]
    assert [a["top5"] for a in answers[0]] == [a["top5"] for a in answers[1]]
    assert answers[0][1]["top5"][0] == "espresso"

    # The same model.onnx described as TorchScript is refused: the meta, not the file name, decides.
    context, _ = _unpacked(classifier_archive, tmp_path / "mislabelled")
    meta_file = tmp_path / "mislabelled" / "model_meta.json"
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"runtime": "torchscript"}))
    with pytest.raises(RuntimeError):
        ImageClassifier().initialize(context)
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"runtime": "openvino"}))
    with pytest.raises(ValueError, match="unknown runtime 'openvino'"):
        ImageClassifier().initialize(context)


@pytest.mark.usefixtures("restore_torch_threads")
def test_a_single_threaded_worker_decodes_a_batch_in_its_own_thread(classifier_archive: Path, tmp_path: Path) -> None:
    """One worker per core (threads 1): no decode pool to hand each image to (it cost about 1 ms of
    CPU per image, bench/serving.py); a batch with a corrupt image still answers both. A worker
    with more threads decodes a batch on them."""
    single = _loaded(classifier_archive, tmp_path / "single")
    assert torch.get_num_threads() == 1 and single._decoders is None
    answers = single.handle([{"body": coffee_jpeg()}, {"body": b"\xff\xd8 not really a jpeg"}], None)
    assert answers[0]["top5"][0] == "espresso"
    assert answers[1]["code"] == "undecodable_image"

    context, _ = _unpacked(classifier_archive, tmp_path / "two")
    meta_file = tmp_path / "two" / "model_meta.json"
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"threads": 2}))
    two = ImageClassifier()
    two.initialize(context)
    assert two._decoders is not None
    assert [a["top5"] for a in two.handle([{"body": coffee_jpeg()}, {"body": chelsea_jpeg()}], None)] == [
        a["top5"] for a in single.handle([{"body": coffee_jpeg()}, {"body": chelsea_jpeg()}], None)]


# --- served for real ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchscript_version(torchserve: TorchServeProcess, torchscript_archive: Path) -> Iterator[str]:
    """The TorchScript archive registered beside the default one on the shared server."""
    client = ManagementClient(torchserve.management_url)
    version = client.register(stage_archive(torchscript_archive, torchserve.model_store), workers=1).version
    try:
        yield version
    finally:
        client.remove(version)


@pytest.mark.torchserve
def test_onnx_and_torchscript_serve_the_same_top5_as_the_eager_model(
    torchserve: TorchServeProcess, torchscript_version: str, lite2: tuple
) -> None:
    model, meta, labels = lite2
    prep = Preprocessing(meta.input_size, meta.resize_size, meta.interpolation, meta.mean, meta.std)
    photos = {"chelsea (test)": chelsea_jpeg(), "coffee (test)": coffee_jpeg(), **dict(reference_photos()[:4])}
    for name, body in photos.items():
        with torch.inference_mode():
            eager = torch.softmax(model(image_to_input(body, prep).unsqueeze(0)), dim=1)[0]
        top = eager.topk(5)
        for version in ("1.0", torchscript_version):
            response = predict(torchserve, body, version=version)
            assert response.status_code == 200, (name, version, response.text)
            answer = response.json()
            assert_prediction(answer, version=version)
            assert answer["top5"] == [labels[i] for i in top.indices.tolist()], (name, version)
            drift = max(abs(a - b) for a, b in zip(answer["prob5"], top.values.tolist(), strict=True))
            assert drift <= 1e-3, (name, version)


@pytest.mark.torchserve
def test_the_served_torchscript_worker_keeps_its_memory(torchserve: TorchServeProcess,
                                                        torchscript_version: str) -> None:
    """WORKER_ENV's malloc settings: without them this worker takes ~4,700 page faults per image
    (glibc hands activation buffers back to the kernel after every forward)."""
    photos = [body for _, body in reference_photos()]
    pids = worker_pids(torchserve.management_url, "classifier", torchscript_version)
    assert pids

    def classify_all(bodies: list[bytes]) -> None:
        # 4 at a time, so batches of 1 and 2 alternate as under real load
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda body: predict(torchserve, body, version=torchscript_version).status_code,
                                     bodies))
        assert statuses == [200] * len(bodies)

    classify_all(photos)  # the first requests of each worker size its heap
    before = sum(minor_faults(pid) for pid in pids)
    classify_all(photos * 2)
    per_image = (sum(minor_faults(pid) for pid in pids) - before) / (2 * len(photos))
    assert per_image < 300, f"{per_image:.0f} minor page faults per image"
