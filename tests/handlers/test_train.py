"""`udagram model train`: a new head on the served backbone, trained, verified, served."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from handlers.archive import archive_info
from handlers.cli import model_app
from handlers.evaluate import archive_labels
from handlers.server import TorchServeProcess
from handlers.train import TrainingConfig, stratified_split, train_head
from tests.handlers.conftest import TRAINED_VERSION, Trained
from tests.handlers.photo_sets import PHOTOS, write_label_folders

LABELS = sorted(PHOTOS)  # the folder names, in the archive's order


def test_the_split_is_stratified_and_seeded() -> None:
    targets = [0] * 10 + [1] * 5 + [2] * 2
    train, validation = stratified_split(targets, 0.2, seed=3)
    assert sorted(train + validation) == list(range(len(targets)))
    assert [sum(targets[i] == c for i in validation) for c in range(3)] == [2, 1, 1]
    assert [sum(targets[i] == c for i in train) for c in range(3)] == [8, 4, 1]
    assert stratified_split(targets, 0.2, seed=3) == (train, validation)
    assert stratified_split(targets, 0.2, seed=4) != (train, validation)


def test_the_head_learns_and_stops_early_on_the_validation_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 64, generator=generator) * 3
    targets = torch.arange(3).repeat_interleave(20)
    features = centres[targets] + torch.randn(60, 64, generator=generator)
    train, validation = stratified_split(targets.tolist(), 0.25, seed=0)
    seen: list[float] = []
    config = TrainingConfig(max_epochs=1000, patience=10)
    head, best, epochs = train_head(features, targets, 3, train, validation, config,
                                    lambda report: seen.append(report.validation_loss))
    assert best.validation_accuracy == 1.0
    assert epochs < config.max_epochs and epochs - best.epoch == config.patience  # stopped early
    assert len(seen) == epochs
    # kept: the best epoch, later ones improving on it by less than min_improvement
    assert min(seen) <= best.validation_loss < min(seen) + config.min_improvement
    assert seen[best.epoch - 1] == best.validation_loss
    with torch.no_grad():  # the kept head is the best epoch's, not the last one's
        kept = torch.nn.functional.cross_entropy(head(features[validation]), targets[validation])
    assert float(kept) == pytest.approx(best.validation_loss, rel=1e-5)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("one-label", "has one label folder (cat); a classifier needs at least 2"),
        ("one-photo", "every label needs at least 2 readable photos (one to train on, one to validate with); "
                      "too few in: dog"),
        ("no-folders", "holds no label folder with images"),
        ("exists", "classifier-2.0.mar exists: choose another --version, or --force to replace it"),
        ("bad-version", "invalid version '../x'"),
    ],
)
def test_training_errors_are_clear(case: str, expected: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "cat").mkdir(parents=True)
    for n in range(2):
        (photos / "cat" / f"{n}.jpg").write_bytes(b"not even read before the checks")
    store = tmp_path / "store"
    version = "2.0"
    if case == "one-photo":
        (photos / "dog").mkdir()
        (photos / "dog" / "0.jpg").write_bytes(b"x")
    elif case == "no-folders":
        photos = tmp_path / "empty"
        photos.mkdir()
    elif case == "exists":
        store.mkdir()
        (store / "classifier-2.0.mar").write_bytes(b"an archive")
    elif case == "bad-version":
        version = "../x"
    result = CliRunner().invoke(model_app, ["train", str(photos), "--version", version, "--store", str(store)])
    assert result.exit_code == 1
    assert f"error: {expected}" in result.output.replace("\n", " ") or expected in result.output
    if case == "exists":
        assert (store / "classifier-2.0.mar").read_bytes() == b"an archive"


def test_training_converges_and_writes_a_verified_archive_with_the_folder_labels(trained: Trained) -> None:
    out = trained.output
    # 12 photos per label, round(0.2 * 12) = 2 of each kept for validation
    assert "trained on 30 photos, validated on 6 (3 labels: Egyptian cat, astronaut, espresso)" in out
    assert "(stopped early)" in out and "validation accuracy 100.0%" in out
    assert "training accuracy 100.0%" in out
    info = archive_info(trained.archive)
    assert info["manifest"]["model"]["modelVersion"] == TRAINED_VERSION
    meta = info["meta"]
    assert (meta["arch"], meta["num_classes"], meta["input_size"], meta["resize_size"]) == (
        "efficientnet_lite2", 3, 260, 292)
    assert archive_labels(trained.archive) == LABELS


@pytest.mark.torchserve
def test_the_trained_version_serves_and_recognises_held_out_photos(
    torchserve: TorchServeProcess, trained_registered: str, tmp_path: Path
) -> None:
    held_out = write_label_folders(tmp_path / "held-out", per_label=4, seed=7)  # other crops and colours
    answers = {}
    for label in LABELS:
        for path in sorted((held_out / label).iterdir()):
            response = httpx.post(f"{torchserve.inference_url}/predictions/classifier/{trained_registered}",
                                  content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"},
                                  timeout=120)
            assert response.status_code == 200, response.text
            answers[(label, path.name)] = response.json()
    for (label, name), answer in answers.items():
        assert answer["model_version"] == TRAINED_VERSION
        assert sorted(answer["top5"]) == LABELS  # 3 classes: answers hold all 3
        assert answer["top5"][0] == label, (label, name, answer)
        assert answer["prob5"][0] > 0.5
    # 1.0 stays the default and still answers with ImageNet's classes
    default = httpx.post(f"{torchserve.inference_url}/predictions/classifier",
                         content=sorted((held_out / "espresso").iterdir())[0].read_bytes(),
                         headers={"Content-Type": "application/octet-stream"}, timeout=120).json()
    assert default["model_version"] == "1.0" and len(default["top5"]) == 5
