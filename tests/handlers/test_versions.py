"""MLOps on a real TorchServe: register a version 2, roll it out, roll back, remove it; CLI errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torchvision.models import efficientnet_b2
from typer.testing import CliRunner

from handlers.archive import Batching, archive_info, build_archive
from handlers.cli import model_app
from handlers.server import TorchServeProcess
from tests.fixtures.ports import free_port
from tests.handlers.images import chelsea_jpeg
from tests.handlers.test_serving import CAT_CLASSES, assert_prediction, predict
from udagram.model_management import ManagementClient, ManagementError
from udagram.settings import Settings, get_settings
from udagram.stack import health
from workers.reprocess import check_model_version

pytestmark = pytest.mark.torchserve

BREEDS = ["Affenpinscher", "Afghan hound", "Airedale terrier", "Akita", "Alaskan malamute", "Basenji", "Beagle"]


@pytest.fixture(scope="module")
def b2_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version 2.0 archive: torchvision B2, 7 made-up classes, weights the test creates."""
    work = tmp_path_factory.mktemp("b2")
    torch.manual_seed(0)
    weights = work / "b2-breeds.pth"
    torch.save(efficientnet_b2(weights=None, num_classes=len(BREEDS)).state_dict(), weights)
    labels = work / "breeds.json"
    labels.write_text(json.dumps(BREEDS))
    return build_archive(
        work / "out",
        arch="efficientnet_b2",
        version="2.0",
        weights=weights,
        labels=labels,
        batching=Batching(batch_size=2, max_batch_delay_ms=5),
    )


@pytest.fixture
def cli(torchserve: TorchServeProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CliRunner]:
    """`udagram model ...` pointed at the test TorchServe through the environment, like a user."""
    monkeypatch.setenv("UDAGRAM_TORCHSERVE_MANAGEMENT_URL", torchserve.management_url)
    monkeypatch.setenv("UDAGRAM_MODEL_STORE", str(torchserve.model_store))
    monkeypatch.setenv("UDAGRAM_DATA_DIR", str(tmp_path / "data"))  # its model registry: not the repo's
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def run(cli: CliRunner, *args: str, ok: bool = True) -> str:
    result = cli.invoke(model_app, list(args))
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert (result.exit_code == 0) is ok, (args, result.exit_code, output)
    return output


def test_b2_archive_carries_its_own_architecture_and_labels(b2_archive: Path) -> None:
    info = archive_info(b2_archive)
    assert info["manifest"]["model"]["modelVersion"] == "2.0"
    assert info["manifest"]["model"]["modelName"] == "classifier"
    meta = info["meta"]
    assert (meta["arch"], meta["input_size"], meta["num_classes"]) == ("efficientnet_b2", 260, len(BREEDS))
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # B2 exports to ONNX too, and passed the same check on the reference photos as Lite2
    assert meta["runtime"] == "onnx" and info["manifest"]["model"]["serializedFile"] == "model.onnx"
    assert meta["verification"]["photos"] == 13 and meta["verification"]["rejected"] == {}


def test_roll_out_version_2_and_roll_back(
    torchserve: TorchServeProcess, cli: CliRunner, b2_archive: Path
) -> None:
    client = ManagementClient(torchserve.management_url)
    try:
        out = run(cli, "register", str(b2_archive))  # outside the store: staged into it
        assert "version 2.0" in out
        assert (torchserve.model_store / b2_archive.name).exists()

        listed = run(cli, "list")
        rows = {line.split()[0]: line for line in listed.splitlines()[1:]}
        assert set(rows) == {"1.0", "2.0"}
        assert "*" in rows["1.0"] and "*" not in rows["2.0"]
        assert "READY" in rows["2.0"]
        assert "2/5ms" in rows["2.0"]  # batching came from the archive's own model-config.yaml

        # Canary: version 2 answers on its own URL while 1.0 stays the default.
        canary = predict(torchserve, chelsea_jpeg(), version="2.0")
        assert canary.status_code == 200, canary.text
        assert_prediction(canary.json(), version="2.0")
        assert set(canary.json()["top5"]) <= set(BREEDS)
        assert predict(torchserve, chelsea_jpeg()).json()["model_version"] == "1.0"

        run(cli, "scale", "2.0", "2")
        v2 = next(v for v in client.versions() if v.version == "2.0")
        assert (v2.max_workers, v2.ready_workers) == (2, 2)
        run(cli, "scale", "2.0", "0")  # parked, still registered
        v2 = next(v for v in client.versions() if v.version == "2.0")
        assert (v2.max_workers, v2.ready_workers) == (0, 0)
        run(cli, "scale", "2.0", "1")
        v2 = next(v for v in client.versions() if v.version == "2.0")
        assert (v2.max_workers, v2.ready_workers) == (1, 1)

        # Roll out.
        run(cli, "set-default", "2.0")
        rolled_out = predict(torchserve, chelsea_jpeg())
        assert rolled_out.status_code == 200
        assert_prediction(rolled_out.json(), version="2.0")

        refused = run(cli, "remove", "2.0", ok=False)
        assert "is the default" in refused and "set-default 1.0" in refused

        # Roll back, then retire version 2.
        run(cli, "set-default", "1.0")
        rolled_back = predict(torchserve, chelsea_jpeg()).json()
        assert rolled_back["model_version"] == "1.0" and rolled_back["top5"][0] in CAT_CLASSES
        run(cli, "remove", "2.0")
        assert [v.version for v in client.versions()] == ["1.0"]
        assert predict(torchserve, chelsea_jpeg(), version="2.0").status_code == 404
    finally:  # leave the shared server as we found it
        try:
            client.set_default("1.0")
            client.remove("2.0")
        except ManagementError:
            pass


def test_health_check_and_reprocess_read_the_server_through_the_client(
    torchserve: TorchServeProcess, tmp_path: Path
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, **torchserve.settings_overrides())
    client = ManagementClient.from_settings(settings)
    assert client.ready()
    default = client.default()
    assert default is not None and (default.version, default.is_default) == ("1.0", True)
    assert len(default.ready_pids) == default.ready_workers >= 1
    assert client.has_version("1.0") and not client.has_version("9.9")
    health.torchserve(settings)  # raises Unhealthy unless a worker of the default version is READY
    assert check_model_version(settings, "1.0") is None
    problem = check_model_version(settings, "9.9")
    assert problem is not None and "has no version '9.9' registered" in problem


def test_cli_errors_are_one_clear_line(cli: CliRunner) -> None:
    assert "has no version '9.9' (registered: 1.0)" in run(cli, "set-default", "9.9", ok=False)
    assert "has no version '9.9'" in run(cli, "scale", "9.9", "1", ok=False)
    assert "has no version '9.9'" in run(cli, "remove", "9.9", ok=False)
    only = run(cli, "remove", "1.0", ok=False)
    assert "is the default" in only and "only version" in only
    assert "not found" in run(cli, "register", "/nonexistent/classifier-3.0.mar", ok=False)
    # and nothing changed
    assert "1.0" in run(cli, "list")


def test_server_down_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("UDAGRAM_TORCHSERVE_MANAGEMENT_URL", url)
    get_settings.cache_clear()
    try:
        for args in (["list"], ["set-default", "1.0"], ["remove", "1.0"], ["scale", "1.0", "1"]):
            result = CliRunner().invoke(model_app, args)
            assert result.exit_code == 1
            message = result.output.strip().splitlines()
            assert message == [
                f"error: TorchServe management API at {url} is not reachable; is the stack up? (make up)"
            ]
    finally:
        get_settings.cache_clear()
