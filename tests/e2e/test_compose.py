"""docker/compose.yaml for real: the images `make images` built, run by podman-compose with the
S3/SQS/DynamoDB stand-ins on free ports; one upload through the containers to DONE; then
everything torn down. Marker `containers`: `make compose-smoke` runs it, `make test` leaves it out
(it needs the images and takes minutes; docs/containers.md has the figures).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
import yaml
from PIL import Image

from tests.e2e.conftest import ARTIFACTS
from tests.fixtures.stack import LocalStack, settings_from, stack_env
from tests.udagram.test_local_stack import IMAGE, chelsea_jpeg, create_group, upload_image
from udagram.stack import health

pytestmark = pytest.mark.containers

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
CONTAINERS_CONF = REPO / "docker" / "podman" / "containers.conf"  # runc, ulimits (see the file)
PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"
SERVICES = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
# Host-side checks of each service, the same functions as the containers' health checks.
HEALTH = {"s3": health.s3, "sqs": health.sqs, "dynamodb": health.dynamodb, "s3-events": health.s3_events,
          "model-server": health.torchserve, "api": health.api, "worker": health.worker}
# Services that do their work and exit (the tables, buckets and queues): exit code 0 is their health.
ONE_SHOT = {name for name, service in SERVICES.items() if service.get("restart") == "on-failure"}
IMAGE_DETAILS = "query($id: ID!) { image(id: $id) { id status title processedImageUrl predictions { label } } }"


class Compose:
    """podman-compose on docker/compose.yaml as project `name`, with `env` (the ports)."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.env = {**env, "CONTAINERS_CONF": str(CONTAINERS_CONF)}

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        with self.log.open("a") as log:
            log.write(f"$ podman-compose {' '.join(args)}\n")
            log.flush()
            result = subprocess.run([str(PODMAN_COMPOSE), "-p", self.name, "-f", str(COMPOSE_FILE), *args],
                                    env=self.env, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout)
            log.write(result.stdout)
        if check and result.returncode:
            raise AssertionError(f"podman-compose {' '.join(args)} exited {result.returncode}; see {self.log}")
        return result

    def podman(self, *args: str) -> str:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, check=True).stdout

    def containers(self) -> dict[str, dict]:
        """This project's containers (running or not) by service."""
        found = json.loads(self.podman("ps", "--all", "--format", "json", "--filter",
                                       f"label=io.podman.compose.project={self.name}") or "[]")
        return {c["Labels"]["io.podman.compose.service"]: c for c in found}

    def leftovers(self) -> dict[str, list[str]]:
        """Volumes and networks of this project still there."""
        label = f"label=io.podman.compose.project={self.name}"
        return {kind: self.podman(kind, "ls", "--quiet", "--filter", label).split() for kind in ("volume", "network")}

    def logs(self) -> str:
        return "\n".join(f"--- {service} ({c['State']})\n" + subprocess.run(
            ["podman", "logs", "--tail", "40", c["Id"]], env=self.env, capture_output=True, text=True).stderr[-4000:]
            for service, c in self.containers().items())


def wait_until(what: str, ready, timeout: float, compose: Compose) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except AssertionError:
            raise
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(2)
    raise AssertionError(f"{what} not ready after {timeout:.0f} s\n{compose.logs()}")


@pytest.mark.timeout(1800)
def test_compose_runs_one_upload_to_done_and_leaves_nothing(tmp_path: Path) -> None:
    assert shutil.which("podman") and PODMAN_COMPOSE.exists(), "run `make container-deps venv` first"
    images = {service["image"] for service in SERVICES.values()}
    missing = [i for i in images if subprocess.run(["podman", "image", "exists", i]).returncode]
    assert not missing, f"images {missing} missing: run `make images`"
    env = stack_env(tmp_path / "unused", tmp_path / "unused")  # free ports for every UDAGRAM_*_PORT
    # The host's view of the stack (ports, endpoints); its DynamoDB health check signs with throwaway
    # keys (the stand-ins' DynamoDB checks none) and it reaches S3 only through presigned URLs.
    settings = settings_from({**env, "AWS_ACCESS_KEY_ID": "host-check", "AWS_SECRET_ACCESS_KEY": "host-check"})
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "compose-smoke.log"
    log.unlink(missing_ok=True)
    compose = Compose(f"udagram-smoke-{uuid4().hex[:8]}", env, log)
    timings: dict[str, float] = {}
    image: dict = {}
    started = time.monotonic()
    try:
        compose.run("up", "-d")
        timings["up -d"] = time.monotonic() - started
        for service, check in HEALTH.items():
            wait_until(service, lambda check=check: check(settings) or True, 600, compose)
        # Every container's own health check (compose's or its image's HEALTHCHECK) passes too.
        containers = compose.containers()
        assert set(containers) == set(SERVICES)
        assert ONE_SHOT == {"resources"}
        for service in ONE_SHOT:
            wait_until(f"{service} to finish", lambda s=service: compose.containers()[s]["State"] == "exited", 300,
                       compose)
            state = json.loads(compose.podman("inspect", "--format", "{{json .State}}", containers[service]["Id"]))
            assert state["ExitCode"] == 0, compose.logs()
            user = compose.podman("inspect", "--format", "{{.Config.User}}", containers[service]["Id"]).strip()
            assert user not in ("", "0", "root"), f"{service} runs as root"
        running = {service: c for service, c in containers.items() if service not in ONE_SHOT}
        for service, container in running.items():
            wait_until(f"{service}'s health check",
                       lambda c=container: subprocess.run(["podman", "healthcheck", "run", c["Id"]], env=compose.env,
                                                          capture_output=True).returncode == 0, 120, compose)
        timings["healthy"] = time.monotonic() - started
        for service, container in running.items():
            assert compose.podman("exec", container["Id"], "id", "-u").strip() != "0", f"{service} runs as root"
        for service in ("api", "worker", "sqs"):  # the API, worker and stand-ins images have no torch
            compose.podman("exec", containers[service]["Id"], "python", "-c",
                           "import importlib.util as u; assert u.find_spec('torch') is None, 'torch installed'")
        for service in ("api", "worker", "sqs", "model-server"):  # no pip settings of the build machine
            settings_files = compose.podman("exec", containers[service]["Id"], "python", "-m", "pip", "config", "list")
            assert all(line.startswith(":env:") for line in settings_files.splitlines()), settings_files

        # Sign in as the compose file says: a token from the API container's local signing key.
        token = compose.run("exec", "-T", "api", "udagram", "token", "--user", "alice").stdout.strip()
        stack = LocalStack(settings, env)
        assert stack.graphql("query { me { id } }", token=token)["me"]["id"] == "alice"
        group = create_group(stack, token, "Cats in containers")
        upload_started = time.monotonic()
        image_id = upload_image(stack, token, group["id"], chelsea_jpeg())

        def done() -> bool:
            nonlocal image
            image = stack.graphql(IMAGE_DETAILS, {"id": image_id})["image"]
            assert image["status"] != "FAILED", image
            return image["status"] == "DONE"

        wait_until(f"image {image_id} DONE", done, 300, compose)
        timings["upload to DONE"] = time.monotonic() - upload_started
        restarts = {service: compose.podman("inspect", "--format", "{{.RestartCount}}", c["Id"]).strip()
                    for service, c in containers.items()}
        print(f"restarts: {restarts}")
        assert image["predictions"][0]["label"] == "Egyptian cat", image
        assert image["title"].startswith("Egyptian cat - ") and image["title"].endswith("%"), image
        processed = httpx.get(image["processedImageUrl"], timeout=30)
        assert processed.status_code == 200
        assert Image.open(io.BytesIO(processed.content)).width == settings.processed_width
        assert stack.graphql(IMAGE, {"id": image_id})["image"]["title"] == image["title"]
    finally:
        down_started = time.monotonic()
        compose.run("down", "--volumes", check=False, timeout=300)
        timings["down"] = time.monotonic() - down_started
        timings["total"] = time.monotonic() - started
        print("compose smoke: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        print(f"title: {image.get('title')}")
        print(f"podman-compose log: {compose.log}")
    assert compose.containers() == {}, "containers left behind"
    assert compose.leftovers() == {"volume": [], "network": []}, "left behind"
