"""The local stack's pure parts: supervisord config, port checks and messages, program list."""

from __future__ import annotations

import configparser
import json
import shlex
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from udagram.settings import Settings
from udagram.stack import control, credentials, programs as programs_module, seaweedfs, supervisor
from udagram.stack.health import Unhealthy
from udagram.stack.programs import SERVICES, programs


def local_settings(tmp_path: Path, **values) -> Settings:
    return Settings(data_dir=tmp_path / "data", **values)


def test_config_declares_every_program_stopped_as_a_group(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    progs = programs(settings)
    paths = supervisor.paths(settings)
    parser = configparser.RawConfigParser()
    parser.read_string(supervisor.render_config(paths, progs))
    assert parser.get("unix_http_server", "file") == str(paths.socket)
    assert parser.get("supervisord", "pidfile") == str(paths.pidfile)
    assert parser.get("supervisord", "childlogdir") == str(settings.data_dir.resolve() / "logs")
    names = [s.removeprefix("program:") for s in parser.sections() if s.startswith("program:")]
    assert names == [p.name for p in progs]
    assert {"s3", "sqs", "dynamodb", "s3-events"} <= set(names)
    for program in progs:
        section = parser[f"program:{program.name}"]
        assert shlex.split(section["command"]) == program.command
        assert section["autostart"] == "false"  # `up` starts them stage by stage
        assert section["stopasgroup"] == section["killasgroup"] == "true"
        assert section["stdout_logfile"] == str(paths.logs / f"{program.name}.log")
        assert int(section["priority"]) == program.stage * 10
    # the event bridge listens before SeaweedFS starts; storage before the services
    stages = {p.name: p.stage for p in progs}
    assert stages["s3-events"] < stages["s3"] < SERVICES
    assert max(stages[n] for n in ("s3", "sqs", "dynamodb", "s3-events")) < SERVICES
    assert all(stages[n] == SERVICES for n in ("torchserve", "api", "worker") if n in stages)


def test_config_escapes_percent_signs(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "100%")
    text = supervisor.render_config(supervisor.paths(settings), programs(settings))
    assert "100%%" in text and "100%/" not in text.replace("100%%", "")


def test_long_data_dirs_get_a_short_control_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    p = supervisor.paths(local_settings(deep))
    assert len(str(p.socket)) <= supervisor.MAX_SOCKET_PATH
    assert p.socket != supervisor.paths(local_settings(tmp_path / "other")).socket


def test_every_listener_is_on_the_configured_host_and_ports(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, s3_port=21001, sqs_port=21002, dynamodb_port=21003,
                              s3_events_port=21004, seaweedfs_port_base=21010)
    by_name = {p.name: p for p in programs(settings)}
    weed = by_name["s3"].command
    assert "-ip.bind=127.0.0.1" in weed and "-s3.port=21001" in weed
    assert [a for a in weed if a.startswith("-master.port=")] == ["-master.port=21010"]
    assert {p.port for p in by_name["s3"].ports} == {21001, *range(21010, 21020)}
    assert by_name["sqs"].command[-4:] == ["-H", "127.0.0.1", "-p", "21002"]
    assert by_name["dynamodb"].command[2:6] == ["--host", "127.0.0.1", "--port", "21003"]
    assert by_name["dynamodb"].command[-1] == str(settings.data_dir / "dynamodb")  # persists
    assert [p.port for p in by_name["s3-events"].ports] == [21004]


def test_aws_mode_runs_no_storage_stand_ins(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, mode="aws")
    assert {p.name for p in programs(settings)} <= {"torchserve", "api", "worker"}


def test_seaweedfs_notifications_go_to_the_bridge(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, s3_events_port=21004)
    cwd = seaweedfs.prepare(settings)
    toml = (cwd / "notification.toml").read_text()
    assert "[notification.webhook]" in toml and 'endpoint = "http://127.0.0.1:21004/events"' in toml
    seaweedfs.prepare(settings, notifications=False)
    assert not (cwd / "notification.toml").exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_install_gets_random_private_keys_for_each_identity(tmp_path: Path) -> None:
    """No key in the source: the first start writes random keys per identity, mode 0600 in a 0700
    directory; they survive restarts, differ between installs, and are SeaweedFS's only identities."""
    settings = local_settings(tmp_path)
    assert settings.aws_access_key_id is None  # nothing exists before the first start
    cwd = seaweedfs.prepare(settings)
    folder = settings.data_dir / "secrets"
    assert _mode(folder) == 0o700
    assert {f.name for f in folder.iterdir()} == {"admin.json", "api.json", "worker.json"}
    assert all(_mode(f) == 0o600 for f in folder.iterdir())
    keys = {f.stem: json.loads(f.read_text()) for f in folder.iterdir()}
    values = {value for pair in keys.values() for value in pair.values()}
    assert len(values) == 6 and all(len(value) >= 20 for value in values)
    assert not values & {"udagram-local", "udagram-local-secret"}  # the constants the source had

    assert _mode(cwd / "identities.json") == 0o600
    config = json.loads((cwd / "identities.json").read_text())
    assert {i["name"]: i["credentials"] for i in config["identities"]} == {
        name: [{"accessKey": pair["accessKeyId"], "secretKey": pair["secretAccessKey"]}] for name, pair in keys.items()}

    seaweedfs.prepare(settings)  # a restart keeps them
    assert {f.stem: json.loads(f.read_text()) for f in folder.iterdir()} == keys
    other = local_settings(tmp_path / "other")
    seaweedfs.prepare(other)
    assert not values & {v for f in (other.data_dir / "secrets").iterdir() for v in json.loads(f.read_text()).values()}


def test_each_process_reads_only_its_own_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "UDAGRAM_LOCAL_IDENTITY"):
        monkeypatch.delenv(name, raising=False)
    keys = credentials.ensure(tmp_path / "data")
    for identity in ("admin", "api", "worker"):
        settings = local_settings(tmp_path, local_identity=identity)
        assert (settings.aws_access_key_id, settings.aws_secret_access_key) == (
            keys[identity]["accessKeyId"], keys[identity]["secretAccessKey"])
    assert local_settings(tmp_path).aws_access_key_id == keys["admin"]["accessKeyId"]  # a command run by hand
    monkeypatch.setenv("UDAGRAM_LOCAL_IDENTITY", "worker")
    assert local_settings(tmp_path).aws_access_key_id == keys["worker"]["accessKeyId"]
    # `none` (bridge, TorchServe): keys S3 does not know, enough for the SQS/DynamoDB stand-ins
    anonymous = local_settings(tmp_path, local_identity="none").aws_access_key_id
    assert anonymous and anonymous not in {pair["accessKeyId"] for pair in keys.values()}
    # the standard AWS variables still win, and mode=aws reads no key file
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXPLICIT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "explicit-secret")
    assert (local_settings(tmp_path).aws_access_key_id, local_settings(tmp_path).aws_secret_access_key) == (
        "AKIAEXPLICIT", "explicit-secret")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert local_settings(tmp_path, mode="aws").aws_access_key_id is None
    # `up` acts as admin whatever identity its caller has
    assert local_settings(tmp_path).as_local_identity("admin").aws_access_key_id == keys["admin"]["accessKeyId"]


def test_programs_get_an_identity_name_and_no_secret(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    keys = credentials.ensure(settings.data_dir)
    progs = programs(settings)
    identities = {p.name: p.environment.get("UDAGRAM_LOCAL_IDENTITY") for p in progs}
    assert identities["s3-events"] == "none"
    assert {name: identities[name] for name in ("torchserve", "api", "worker") if name in identities} == {
        name: role for name, role in (("torchserve", "none"), ("api", "api"), ("worker", "worker"))
        if name in identities}
    config = supervisor.render_config(supervisor.paths(settings), progs)
    commands = " ".join(" ".join(p.command) for p in progs)
    for pair in keys.values():
        for value in pair.values():
            assert value not in config and value not in commands


def test_s3_answers_cors_to_the_web_page_only(tmp_path: Path) -> None:
    """SeaweedFS's global CORS list (its default is `*`) is the page's origins; its IAM API is off."""
    settings = local_settings(tmp_path, api_port=9000)
    weed = seaweedfs.command(settings)
    assert [a for a in weed if a.startswith("-s3.allowedOrigins")] == [
        "-s3.allowedOrigins=http://127.0.0.1:9000,http://localhost:9000"]
    assert "-s3.iam=false" in weed
    public = local_settings(tmp_path, public_url="https://photos.example.com/")
    assert "-s3.allowedOrigins=https://photos.example.com" in seaweedfs.command(public)


def test_a_taken_port_is_named_with_the_variable_that_moves_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert control.port_taken("127.0.0.1", port)
        settings = local_settings(tmp_path, sqs_port=port)
        with pytest.raises(control.PortInUse) as info:
            control.check_ports(settings, programs(settings))
    message = str(info.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert "SQS" in message and "UDAGRAM_SQS_PORT=<port>" in message
    assert not control.port_taken("127.0.0.1", port)  # released


def test_up_refuses_taken_ports_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = local_settings(tmp_path, s3_events_port=busy.getsockname()[1])
        with pytest.raises(control.PortInUse, match="UDAGRAM_S3_EVENTS_PORT"):
            control.up(settings, env={})
    assert supervisor.running_pid(supervisor.paths(settings)) is None
    assert not (settings.data_dir / "supervisord.conf").exists()


def test_several_api_processes_and_workers_are_one_program_each(tmp_path: Path) -> None:
    """UDAGRAM_API_PROCESSES / UDAGRAM_WORKER_PROCESSES: one supervised program per process, each
    with its own metrics port (the first one's + 10 per process), the API port declared once."""
    single = {p.name: p for p in programs(local_settings(tmp_path))}
    assert {"api", "worker"} <= single.keys()  # one of each keeps the plain names
    settings = local_settings(tmp_path, api_processes=2, worker_processes=3, api_metrics_port=9401,
                              worker_metrics_port=9400, api_port=8000)
    progs = programs(settings)
    by_role = {role: [p for p in progs if p.role == role] for role in ("api", "worker")}
    assert [p.name for p in by_role["api"]] == ["api-1", "api-2"]
    assert [p.name for p in by_role["worker"]] == ["worker-1", "worker-2", "worker-3"]
    assert [p.environment["UDAGRAM_API_METRICS_PORT"] for p in by_role["api"]] == ["9401", "9411"]
    assert [p.environment["UDAGRAM_WORKER_METRICS_PORT"] for p in by_role["worker"]] == ["9400", "9410", "9420"]
    assert [[port.port for port in p.ports] for p in by_role["api"]] == [[8000, 9401], [9411]]
    assert all(p.environment["UDAGRAM_LOCAL_IDENTITY"] == p.role for p in progs if p.role in ("api", "worker"))
    declared = [port.port for p in progs for port in p.ports]
    assert len(declared) == len(set(declared))
    parser = configparser.RawConfigParser()
    parser.read_string(supervisor.render_config(supervisor.paths(settings), progs))
    assert 'UDAGRAM_WORKER_METRICS_PORT="9420"' in parser["program:worker-3"]["environment"]
    assert {"api", "worker"}.isdisjoint(s.removeprefix("program:") for s in parser.sections())
    metrics = {name: url for name, url in control.urls(settings).items() if name.startswith(("API", "worker"))}
    assert metrics == {
        "API 1 metrics": "http://127.0.0.1:9401/metrics", "API 2 metrics": "http://127.0.0.1:9411/metrics",
        "worker 1 metrics": "http://127.0.0.1:9400/metrics", "worker 2 metrics": "http://127.0.0.1:9410/metrics",
        "worker 3 metrics": "http://127.0.0.1:9420/metrics"}


def test_a_port_wanted_by_two_processes_is_refused_naming_both(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, worker_processes=2, worker_metrics_port=21400, api_metrics_port=21410)
    with pytest.raises(control.PortInUse) as info:
        control.check_ports(settings, programs(settings))
    assert str(info.value) == ("port 21410 is wanted by both API metrics (UDAGRAM_API_METRICS_PORT) and worker "
                               "metrics (worker-2) (UDAGRAM_WORKER_METRICS_PORT): move one of them")


def test_each_process_is_checked_on_its_own_metrics_port(tmp_path: Path) -> None:
    """worker-1's metrics answering says nothing about worker-2."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = local_settings(tmp_path, worker_processes=2, worker_metrics_port=server.server_address[1])
        health = {p.name: control.check_health(p, settings) for p in programs(settings) if p.role == "worker"}
    finally:
        server.shutdown()
        server.server_close()
    assert health["worker-1"] == "healthy"
    assert f":{server.server_address[1] + 10}/metrics" in health["worker-2"]


class FakeSupervisor:
    """supervisord's getProcessInfo: each program's state in turn, the last one repeated."""

    def __init__(self, states: dict[str, list[str]]) -> None:
        self.states = states

    def getProcessInfo(self, name: str) -> dict:  # noqa: N802 - supervisord's XML-RPC name
        states = self.states[name]
        return {"statename": states.pop(0) if len(states) > 1 else states[0], "spawnerr": ""}


def _program(name: str, healthy_after: int) -> programs_module.Program:
    checks = []

    def health(settings: Settings) -> None:
        checks.append(1)
        if len(checks) < healthy_after:
            raise Unhealthy(f"{name} not yet ({len(checks)})")

    return programs_module.Program(name=name, title=name.upper(), command=["true"], stage=1, ports=(),
                                   health=health)


def _wait(tmp_path: Path, states: dict[str, list[str]], group: list, timeout: float) -> list[str]:
    settings = local_settings(tmp_path)
    said: list[str] = []
    proxy = type("Proxy", (), {"supervisor": FakeSupervisor(states)})()
    control._wait_healthy(settings, proxy, group, supervisor.paths(settings), timeout, said.append)
    return said


def test_up_waits_until_every_program_of_a_stage_is_healthy(tmp_path: Path) -> None:
    group = [_program("fast", healthy_after=1), _program("slow", healthy_after=3)]
    said = _wait(tmp_path, {"fast": ["RUNNING"], "slow": ["STARTING", "RUNNING"]}, group, timeout=30)
    assert said == ["  FAST: healthy", "  SLOW: healthy"]


def test_up_names_what_is_still_unhealthy_at_the_deadline(tmp_path: Path) -> None:
    group = [_program("fast", healthy_after=1), _program("never", healthy_after=10**6)]
    with pytest.raises(control.StackError, match=r"not healthy after 0s:\n- NEVER \(never\): never not yet \(\d+\)"):
        _wait(tmp_path, {"fast": ["RUNNING"], "never": ["RUNNING"]}, group, timeout=0.3)


def test_up_stops_waiting_at_once_when_a_program_gave_up(tmp_path: Path) -> None:
    group = [_program("broken", healthy_after=10**6)]
    with pytest.raises(control.StackError, match=r"BROKEN \(broken\) is FATAL"):
        _wait(tmp_path, {"broken": ["STARTING", "FATAL"]}, group, timeout=300)


def test_down_waits_for_processes_to_exit_and_names_the_survivors() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert control._wait_gone([proc.pid], 0.3) == [proc.pid]  # alive at the deadline
        proc.terminate()
        assert control._wait_gone([proc.pid], 10) == []  # exited (a zombie until reaped counts as gone)
    finally:
        proc.kill()
        proc.wait()
