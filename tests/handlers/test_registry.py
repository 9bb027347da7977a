"""Registered versions and the default survive a TorchServe restart (handlers/registry.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from handlers import registry
from handlers.cli import model_app
from handlers.registry import Registry, RegistryError, VersionEntry, plan_start
from handlers.server import wait_until_ready
from tests.fixtures.ports import free_port
from tests.fixtures.torchserve import archive_as_version
from tests.handlers.images import coffee_jpeg
from udagram.model_management import ManagementClient, ManagementError
from udagram.settings import get_settings

UDAGRAM = Path(sys.executable).with_name("udagram")


# --- the start plan (no server) ------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    for version in ("1.0", "2.0"):
        (store / f"classifier-{version}.mar").write_bytes(b"an archive")
    return store


def built(store: Path):  # noqa: ANN201
    """archive_for as `serve` gives it: the archive of a version, recording which were asked for."""
    asked: list[str] = []

    def archive_for(version: str) -> Path:
        asked.append(version)
        return store / f"classifier-{version}.mar"

    return archive_for, asked


def recorded(default: str, **workers: int) -> Registry:
    return Registry(model="classifier", default=default, versions={
        v.replace("_", "."): VersionEntry(archive=f"classifier-{v.replace('_', '.')}.mar", workers=n)
        for v, n in workers.items()
    })


def test_without_a_registry_the_configured_default_is_served(store: Path) -> None:
    archive_for, asked = built(store)
    plan = plan_start(None, store, "1.0", False, archive_for)
    assert (plan.default, plan.default_archive, plan.default_workers) == ("1.0", "classifier-1.0.mar", None)
    assert plan.others == {} and plan.skipped == {} and asked == ["1.0"]


def test_the_recorded_default_and_versions_are_served_again(store: Path) -> None:
    archive_for, asked = built(store)
    plan = plan_start(recorded("2.0", **{"1_0": 2, "2_0": 1}), store, "1.0", False, archive_for)
    assert (plan.default, plan.default_archive, plan.default_workers) == ("2.0", "classifier-2.0.mar", 1)
    assert plan.others == {"1.0": VersionEntry(archive="classifier-1.0.mar", workers=2)}
    assert asked == []  # the recorded archives are used as they are


def test_a_default_set_in_the_environment_wins_over_the_registry(store: Path) -> None:
    archive_for, _ = built(store)
    plan = plan_start(recorded("2.0", **{"1_0": 2, "2_0": 1}), store, "1.0", True, archive_for)
    assert (plan.default, plan.default_workers) == ("1.0", 2)
    assert list(plan.others) == ["2.0"]


def test_a_version_whose_archive_vanished_is_skipped(store: Path) -> None:
    archive_for, _ = built(store)
    (store / "classifier-2.0.mar").unlink()
    plan = plan_start(recorded("1.0", **{"1_0": 2, "2_0": 1}), store, "1.0", False, archive_for)
    assert plan.default == "1.0" and plan.others == {}
    assert "classifier-2.0.mar is no longer in the model store" in plan.skipped["2.0"]


def test_a_default_whose_archive_vanished_falls_back_to_the_configured_one(store: Path) -> None:
    archive_for, asked = built(store)
    (store / "classifier-2.0.mar").unlink()
    plan = plan_start(recorded("2.0", **{"1_0": 1, "2_0": 1}), store, "1.0", False, archive_for)
    assert (plan.default, plan.default_workers) == ("1.0", 1)
    assert list(plan.skipped) == ["2.0"] and plan.others == {}


def test_a_damaged_registry_is_named(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    assert registry.load(path) is None
    path.write_text('{"model": "classifier", "versions": {"2.0": {"archive": 3}}}')
    with pytest.raises(RegistryError, match=r"registry\.json is damaged .* at versions\.2\.0"):
        registry.load(path)
    path.write_text("not json")
    with pytest.raises(RegistryError, match="is damaged"):
        registry.load(path)


# --- `udagram model serve` restarted ----------------------------------------------------------------


class Serve:
    """`udagram model serve` as supervisord runs it, on free ports, restartable."""

    def __init__(self, store: Path, data_dir: Path) -> None:
        self.ports = {name: free_port() for name in
                      ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT")}
        self.env = {f"UDAGRAM_TORCHSERVE_{name}_PORT": str(port) for name, port in self.ports.items()}
        self.env.update({"UDAGRAM_DATA_DIR": str(data_dir), "UDAGRAM_MODEL_STORE": str(store)})
        self.management = f"http://127.0.0.1:{self.ports['MANAGEMENT']}"
        self.output = data_dir.parent / "serve.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UDAGRAM_") and k != "LOG_LOCATION"}
        env.update(self.env)
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen([str(UDAGRAM), "model", "serve"], env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_ready(self.management, "classifier", timeout=240, process=self.process)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                assert self.process.wait(timeout=120) == 0
            finally:
                if self.process.poll() is None:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def settled(self, expected: set[str], timeout: float = 240) -> list:
        """The versions once exactly `expected` are registered with every worker READY and the
        restore has finished (it writes the registry last, then says which versions it serves)."""
        client = ManagementClient(self.management)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                versions = client.versions()
            except ManagementError:
                versions = []
            done = "serving versions" in self.output.read_text(errors="replace").split("TorchServe starting")[-1]
            if done and {v.version for v in versions} == expected and all(
                v.ready_workers == v.min_workers for v in versions
            ):
                return versions
            time.sleep(0.5)
        raise AssertionError(f"versions never settled on {expected}; see {self.output}")

    def log_since_start(self) -> str:
        return self.output.read_text(errors="replace").split("TorchServe starting")[-1]


@pytest.fixture
def serve(classifier_archive: Path, tmp_path: Path) -> Iterator[Serve]:
    store = tmp_path / "store"
    store.mkdir()
    os.link(classifier_archive, store / classifier_archive.name)
    archive_as_version(classifier_archive, "2.0", store)
    instance = Serve(store, tmp_path / "data")
    try:
        yield instance
    finally:
        instance.stop()


def cli(serve: Serve, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    for key, value in serve.env.items():
        monkeypatch.setenv(key, value)
    for key in ("UDAGRAM_TORCHSERVE_MANAGEMENT_URL", "UDAGRAM_TORCHSERVE_INFERENCE_URL",
                "UDAGRAM_MODEL_DEFAULT_VERSION"):
        monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(model_app, list(args))
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, (args, result.output)
    return result.output


def listed(output: str) -> dict[str, list[str]]:
    """`udagram model list` rows by version: [version, "*"?, workers, status, batch, archive]."""
    return {line.split()[0]: line.split() for line in output.splitlines()[1:]}


@pytest.mark.torchserve
def test_versions_and_the_default_survive_a_restart(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    registry_file = Path(serve.env["UDAGRAM_DATA_DIR"]) / "torchserve" / "registry.json"
    serve.start()
    serve.settled({"1.0"})
    assert json.loads(registry_file.read_text())["default"] == "1.0"  # recorded at the first start

    cli(serve, monkeypatch, "register", "classifier-2.0.mar")
    cli(serve, monkeypatch, "set-default", "2.0")
    cli(serve, monkeypatch, "scale", "1.0", "1")
    assert json.loads(registry_file.read_text()) == {
        "model": "classifier",
        "default": "2.0",
        "versions": {"2.0": {"archive": "classifier-2.0.mar", "workers": 1},
                     "1.0": {"archive": "classifier-1.0.mar", "workers": 1}},
    }

    serve.restart()
    versions = serve.settled({"1.0", "2.0"})
    rows = listed(cli(serve, monkeypatch, "list"))
    assert rows["2.0"][1] == "*"  # the default, as it was
    workers = {v.version: (v.min_workers, v.ready_workers) for v in versions}
    assert workers == {"2.0": (1, 1), "1.0": (1, 1)}  # as recorded (their archives ask for one per core)
    answer = httpx.post(f"http://127.0.0.1:{serve.ports['INFERENCE']}/predictions/classifier", content=coffee_jpeg(),
                        headers={"Content-Type": "application/octet-stream"}, timeout=120).json()
    assert answer["model_version"] == "2.0" and answer["top5"][0] == "espresso"

    # Removing persists too.
    cli(serve, monkeypatch, "set-default", "1.0")
    cli(serve, monkeypatch, "remove", "2.0")
    serve.restart()
    versions = serve.settled({"1.0"})
    assert [(v.version, v.is_default) for v in versions] == [("1.0", True)]


@pytest.mark.torchserve
def test_a_recorded_version_whose_archive_vanished_is_skipped(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    serve.start()
    serve.settled({"1.0"})
    cli(serve, monkeypatch, "register", "classifier-2.0.mar")
    cli(serve, monkeypatch, "set-default", "2.0")
    store = Path(serve.env["UDAGRAM_MODEL_STORE"])
    (store / "classifier-2.0.mar").unlink()  # deleted while recorded as the default

    serve.restart()
    versions = serve.settled({"1.0"})
    assert [(v.version, v.is_default) for v in versions] == [("1.0", True)]  # still serving
    log = serve.log_since_start()
    assert "warning: version 2.0 not restored: its archive classifier-2.0.mar is no longer in the model store" in log
    registry_file = Path(serve.env["UDAGRAM_DATA_DIR"]) / "torchserve" / "registry.json"
    assert list(json.loads(registry_file.read_text())["versions"]) == ["1.0"]  # the record says what is served
