"""The local stack's pure parts: supervisord config, port checks and messages, program list."""

from __future__ import annotations

import configparser
import json
import shlex
import socket
import stat
from pathlib import Path

import pytest

from udagram.settings import Settings
from udagram.stack import control, credentials, seaweedfs, supervisor
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
