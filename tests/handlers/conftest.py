"""A classifier trained by `udagram model train`, shared by the training and evaluation tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from handlers.cli import model_app
from handlers.server import TorchServeProcess
from tests.handlers.photo_sets import write_label_folders
from udagram.settings import get_settings

TRAINED_VERSION = "2.1"


@dataclass(frozen=True)
class Trained:
    archive: Path
    output: str  # what `udagram model train` printed
    photos: Path  # its label folders


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """`udagram model train` on 3 labels x 12 photos (seeded crops, flips, colour jitter of
    scikit-image's chelsea, coffee and astronaut)."""
    work = tmp_path_factory.mktemp("trained")
    photos = write_label_folders(work / "photos", per_label=12, seed=1)
    result = CliRunner().invoke(
        model_app, ["train", str(photos), "--version", TRAINED_VERSION, "--store", str(work / "store")]
    )
    assert result.exit_code == 0, result.output
    return Trained(work / "store" / f"classifier-{TRAINED_VERSION}.mar", result.output, photos)


def model_command(torchserve: TorchServeProcess, data_dir: Path, *args: str, ok: bool = True) -> str:
    """`udagram model ARGS` against a test TorchServe, configured through the environment like a
    user's shell (its model registry in `data_dir`); asserts the exit status, returns the output."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("UDAGRAM_TORCHSERVE_MANAGEMENT_URL", torchserve.management_url)
        env.setenv("UDAGRAM_TORCHSERVE_INFERENCE_URL", torchserve.inference_url)
        env.setenv("UDAGRAM_MODEL_STORE", str(torchserve.model_store))
        env.setenv("UDAGRAM_DATA_DIR", str(data_dir))
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(model_app, list(args))
        finally:
            get_settings.cache_clear()
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert (result.exit_code == 0) is ok, (args, result.exit_code, output)
    return output


@pytest.fixture(scope="module")
def trained_registered(
    torchserve: TorchServeProcess, trained: Trained, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The trained archive registered beside 1.0 on the session's TorchServe (removed afterwards)."""
    data_dir = tmp_path_factory.mktemp("data")
    staged = (torchserve.model_store / trained.archive.name).exists()  # by an earlier module
    model_command(torchserve, data_dir, "register", trained.archive.name if staged else str(trained.archive))
    try:
        yield TRAINED_VERSION
    finally:
        model_command(torchserve, data_dir, "remove", TRAINED_VERSION)
