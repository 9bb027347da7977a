"""TorchServeProcess: the stop/restart other tests rely on (outage simulation) really works, and its
management port refuses what a web page can send."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from handlers.server import WORKER_ENV, Endpoints, TorchServeProcess, read_properties, render_config
from tests.fixtures.torchserve import parent_pid, worker_pids
from tests.handlers.images import coffee_jpeg
from udagram.model_management import ManagementClient
from udagram.settings import Settings

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.torchserve


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
            except ProcessLookupError:
                pass
    return members


def espresso(ts: TorchServeProcess) -> bool:
    response = httpx.post(
        ts.inference_url + "/predictions/classifier",
        content=coffee_jpeg(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=180,  # a worker that is (re)loading the model on a busy machine
    )
    return response.status_code == 200 and response.json()["top5"][0] == "espresso"


def test_stop_leaves_nothing_and_start_serves_again(torchserve_factory: Callable[..., TorchServeProcess]) -> None:
    ts = torchserve_factory()
    assert espresso(ts)
    pgid = ts.pid
    assert pgid is not None and len(group_members(pgid)) >= 3  # launcher, Java, Python worker

    ts.stop()
    assert not ts.is_running()
    assert group_members(pgid) == []
    for url in (ts.inference_url + "/ping", ts.management_url + "/models"):  # the guard is gone too
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=5)

    ts.start()  # same ports, same model
    assert espresso(ts)


def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(torchserve: TorchServeProcess) -> None:
    ts = torchserve  # the shared one: it is whole again when this test ends
    old_pid = worker_pid(ts)
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and worker_pid(ts) in (old_pid, None):
        time.sleep(0.5)
    assert worker_pid(ts) not in (old_pid, None), "TorchServe did not replace the killed worker"
    assert espresso(ts)


def worker_pid(ts: TorchServeProcess) -> int | None:
    """The pid of the READY worker, if there is one."""
    workers = httpx.get(ts.management_url + "/models/classifier", timeout=10).json()[0]["workers"]
    ready = [int(w["pid"]) for w in workers if w["status"] == "READY" and w.get("pid")]
    return ready[0] if ready else None


def test_rendered_config_overrides_ports_and_keeps_the_rest(tmp_path: Path) -> None:
    endpoints = Endpoints("127.0.0.1", 1111, 2222, 3333, 4444, 5555)
    config = read_properties(render_config(endpoints, tmp_path, {"job_queue_size": "7"}))
    assert config["inference_address"] == "http://127.0.0.1:1111"
    # TorchServe's own management listener is a Unix socket; port 2222 is the guard's
    assert config["management_address"] == f"unix:{tmp_path / 'management.sock'}"
    assert config["use_native_io"] == "true"
    assert config["metrics_address"] == "http://127.0.0.1:3333"
    assert (config["grpc_inference_port"], config["grpc_management_port"]) == ("4444", "5555")
    assert config["job_queue_size"] == "7"
    assert config["metrics_mode"] == "prometheus"
    assert config["disable_token_authorization"] == "true"
    assert "-Xmx512m" in config["vmargs"]
    assert config["allowed_urls"] == "^$"  # archives by file name from the store only


def test_a_config_template_elsewhere_is_used(tmp_path: Path) -> None:
    """An installed package (the Docker image) has no repository next to it: UDAGRAM_TORCHSERVE_CONFIG."""
    template = tmp_path / "elsewhere.properties"
    template.write_text("default_workers_per_model=3\ninference_address=http://0.0.0.0:9\n")
    endpoints = Endpoints("127.0.0.1", 1111, 2222, 3333, 4444, 5555)
    config = read_properties(render_config(endpoints, tmp_path / "run", template=template))
    assert config["default_workers_per_model"] == "3"
    assert config["inference_address"] == "http://127.0.0.1:1111"


def test_endpoints_are_the_settings_that_name_them(tmp_path: Path) -> None:
    """`as_settings` writes and `from_settings` reads the same settings, each of which exists."""
    endpoints = Endpoints("127.0.0.2", 1111, 2222, 3333, 4444, 5555)
    settings = Settings(_env_file=None, data_dir=tmp_path, **endpoints.as_settings())
    assert (settings.host, settings.torchserve_inference_port, settings.torchserve_grpc_management_port) == (
        "127.0.0.2", 1111, 5555)
    assert Endpoints.from_settings(settings) == endpoints


def test_the_model_workers_get_the_worker_environment(torchserve: TorchServeProcess) -> None:
    """Passive OpenMP and the malloc settings reach the Python workers (started by Java)."""
    assert {"OMP_WAIT_POLICY", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} <= set(WORKER_ENV)
    pids = worker_pids(torchserve.management_url)
    assert pids
    for pid in pids:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        environ = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        for key, value in WORKER_ENV.items():
            assert environ.get(key) == value, (pid, key)


def test_the_java_frontend_runs_with_the_configured_jvm_options(torchserve: TorchServeProcess) -> None:
    """config.properties' vmargs reach the JVM (the model workers' parent): C1 only, since the C2
    JIT compiler took CPU from the model workers for minutes after start (config.properties)."""
    java = parent_pid(worker_pids(torchserve.management_url)[0])
    command = Path(f"/proc/{java}/cmdline").read_bytes().decode().split("\0")
    assert "java" in Path(command[0]).name
    assert {"-XX:TieredStopAtLevel=1", "-Xmx512m", "-XX:+UseSerialGC"} <= set(command)


def test_the_model_server_image_sets_the_same_worker_environment() -> None:
    """docker/model-server.Dockerfile runs `udagram model serve` too: the same values, not others."""
    text = (REPO / "docker" / "model-server.Dockerfile").read_text()
    declared = dict(re.findall(r"\b([A-Z_]+)=(\S+)", " ".join(
        line.split(None, 1)[1] for line in text.replace("\\\n", " ").splitlines() if line.startswith("ENV "))))
    for key, value in WORKER_ENV.items():
        assert declared.get(key) == value, key

def test_the_management_api_refuses_what_a_web_page_can_send(
        torchserve_factory: Callable[..., TorchServeProcess]) -> None:
    """Any page the user opens can send a form POST to a loopback port (no CORS needed to send it),
    and TorchServe's management API would execute it. Each request below, as a browser sends it
    (Origin, Sec-Fetch-* metadata, or a rebinding page's own host name), is refused with a clear
    403 and changes nothing; programs (no such header) are served. An own instance: before the
    guard these requests registered a model and parked the workers."""
    ts = torchserve_factory()
    management = ts.management_url
    before = httpx.get(f"{management}/models/classifier/all", timeout=30).json()
    assert before[0]["minWorkers"] >= 1
    archive = next(Path(ts.model_store).glob("*.mar")).name
    register = f"{management}/models?url={archive}&model_name=planted&initial_workers=1&synchronous=true"
    scale = f"{management}/models/classifier?min_worker=0&max_worker=0&synchronous=true"
    evil = "http://evil.example"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    attempts = {
        "form POST registering a model": httpx.post(register, content=b"a=b", timeout=120,
                                                    headers={**form, "Origin": evil}),
        "form POST, metadata only": httpx.post(register, content=b"a=b", timeout=120, headers={
            **form, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}),
        "fetch PUT scaling to zero": httpx.put(scale, timeout=120, headers={"Origin": evil}),
        "same-origin POST after DNS rebinding": httpx.post(
            register, content=b"a=b", timeout=120,
            headers={**form, "Host": f"evil.example:{ts.endpoints.management_port}"}),
        "page reading the models": httpx.get(f"{management}/models", timeout=30, headers={"Origin": evil}),
    }
    answers = {what: (r.status_code, r.json().get("message", "")) for what, r in attempts.items()}
    assert all(code == 403 for code, _ in answers.values()), answers
    assert all("refuses browser requests" in m or "answers only" in m for _, m in answers.values()), answers
    assert httpx.get(f"{management}/models", timeout=30).json() == {"models": [
        {"modelName": "classifier", "modelUrl": before[0]["modelUrl"]}]}
    after = httpx.get(f"{management}/models/classifier/all", timeout=30).json()
    assert [(v["modelVersion"], v["minWorkers"], v["maxWorkers"]) for v in after] == \
        [(v["modelVersion"], v["minWorkers"], v["maxWorkers"]) for v in before]
    # programs pass: the management client (`udagram model`) and a plain request
    assert [v.version for v in ManagementClient(management).versions()] == [before[0]["modelVersion"]]
    assert httpx.post(register, timeout=120).status_code == 200  # the same registration, from a program
    assert {m["modelName"] for m in httpx.get(f"{management}/models", timeout=30).json()["models"]} == {
        "classifier", "planted"}


def test_predictions_leave_no_frontend_line_per_request_in_the_logs(torchserve: TorchServeProcess) -> None:
    """handlers/log4j2.xml: the frontend writes no access, debug or metric line per prediction (CPU
    the model workers need; bench/serving.py); its own log and the workers' log (the handler's
    line per batch) remain."""
    logs = torchserve.log_dir
    assert espresso(torchserve)  # warm: a first request may log its connection
    time.sleep(1)  # asynchronous logging: let the writer catch up
    frontend_before = (logs / "ts_log.log").read_text()
    for _ in range(20):
        assert espresso(torchserve)
    time.sleep(1)
    added = (logs / "ts_log.log").read_text()[len(frontend_before):]
    assert added.count("\n") < 5, added[-2000:]
    assert not (logs / "access_log.log").exists() and not (logs / "model_metrics.log").exists()
    assert not (logs / "ts_metrics.log").exists()
    assert "Model classifier loaded." in frontend_before
    assert "batch size=1 predicted=1" in (logs / "model_log.log").read_text()
