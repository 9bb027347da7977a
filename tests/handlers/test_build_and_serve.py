"""`udagram model build` (idempotent, clear errors) and `udagram model serve` (foreground, SIGTERM)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchvision.models import efficientnet_b2
from typer.testing import CliRunner

from handlers.archive import archive_info, ensure_default_archive, handler_sha256
from handlers.cli import model_app
from handlers.server import is_ready, wait_until_ready
from tests.fixtures.ports import free_port
from tests.handlers.images import coffee_jpeg

UDAGRAM = Path(sys.executable).with_name("udagram")


@pytest.fixture
def store_with_default(classifier_archive: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy2(classifier_archive, store / classifier_archive.name)
    return store


def test_build_keeps_an_existing_archive(store_with_default: Path) -> None:
    archive = store_with_default / "classifier-1.0.mar"
    before = archive.stat().st_mtime_ns
    result = CliRunner().invoke(model_app, ["build", "--store", str(store_with_default)])
    assert result.exit_code == 0, result.output
    assert "kept" in result.output and "efficientnet_lite2, 1000 classes" in result.output
    assert archive.stat().st_mtime_ns == before
    assert ensure_default_archive(SimpleNamespace(model_store=store_with_default)) == archive
    assert archive.stat().st_mtime_ns == before


def test_ensure_default_archive_rebuilds_one_made_by_another_handler(store_with_default: Path) -> None:
    archive = store_with_default / "classifier-1.0.mar"
    with zipfile.ZipFile(archive) as mar:
        entries = {name: mar.read(name) for name in mar.namelist()}
    entries["model_meta.json"] = json.dumps({"handler_sha256": "0" * 64}).encode()  # an older handler's
    with zipfile.ZipFile(archive, "w") as mar:
        for name, content in entries.items():
            mar.writestr(name, content)
    assert ensure_default_archive(SimpleNamespace(model_store=store_with_default)) == archive
    meta = archive_info(archive)["meta"]
    assert meta["handler_sha256"] == handler_sha256()
    assert meta["arch"] == "efficientnet_lite2"
    assert not list(store_with_default.glob(".*partial"))


def b2_weights(path: Path, classes: int) -> Path:
    torch.save(efficientnet_b2(weights=None, num_classes=classes).state_dict(), path)
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no-weights", "efficientnet_b2 needs --weights FILE"),
        ("label-mismatch", "has 5 labels but the weights have 7 classes"),
        ("no-labels", "has 7 classes: give their names with --labels FILE"),
        ("not-weights", "cannot read weights"),
        ("unknown-arch", "unknown architecture 'resnet50'"),
        ("bad-version", "invalid version '../2'"),
    ],
)
def test_build_errors_are_clear(case: str, expected: str, tmp_path: Path) -> None:
    args = ["build", "--store", str(tmp_path / "store"), "--arch", "efficientnet_b2", "--version", "2.0"]
    if case == "label-mismatch":
        labels = tmp_path / "labels.txt"
        labels.write_text("\n".join(["a", "b", "c", "d", "e"]))
        args += ["--weights", str(b2_weights(tmp_path / "w.pth", 7)), "--labels", str(labels)]
    elif case == "no-labels":
        args += ["--weights", str(b2_weights(tmp_path / "w.pth", 7))]
    elif case == "not-weights":
        junk = tmp_path / "junk.pth"
        junk.write_bytes(b"not a checkpoint")
        args += ["--weights", str(junk)]
    elif case == "unknown-arch":
        args[args.index("efficientnet_b2")] = "resnet50"
    elif case == "bad-version":
        args[args.index("2.0")] = "../2"
    result = CliRunner().invoke(model_app, args)
    assert result.exit_code == 1
    assert expected in result.output
    assert not list((tmp_path / "store").glob("*.mar")) if (tmp_path / "store").exists() else True


@pytest.mark.torchserve
def test_serve_runs_in_the_foreground_and_stops_on_sigterm(store_with_default: Path, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT")}
    env = dict(os.environ)
    env.update({f"UDAGRAM_TORCHSERVE_{name}_PORT": str(port) for name, port in ports.items()})
    env.update({"UDAGRAM_DATA_DIR": str(tmp_path / "data"), "UDAGRAM_MODEL_STORE": str(store_with_default)})
    for key in ("UDAGRAM_TORCHSERVE_INFERENCE_URL", "UDAGRAM_TORCHSERVE_MANAGEMENT_URL", "LOG_LOCATION"):
        env.pop(key, None)
    management = f"http://127.0.0.1:{ports['MANAGEMENT']}"
    with open(tmp_path / "serve.out", "wb") as out:
        serve = subprocess.Popen(
            [str(UDAGRAM), "model", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_ready(management, "classifier", timeout=180, process=serve)  # type: ignore[arg-type]
        import httpx

        answer = httpx.post(
            f"http://127.0.0.1:{ports['INFERENCE']}/predictions/classifier",
            content=coffee_jpeg(),
            headers={"Content-Type": "application/octet-stream"},
            timeout=60,
        ).json()
        assert answer["top5"][0] == "espresso"
        java_pid = int((tmp_path / "data" / "torchserve" / "tmp" / ".model_server.pid").read_text().strip())
        assert (tmp_path / "data" / "logs" / "torchserve" / "ts_log.log").exists()

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=90) == 0
        assert not is_ready(management, "classifier")
        assert not Path(f"/proc/{java_pid}").exists(), "TorchServe's Java process outlived `model serve`"
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=30)
