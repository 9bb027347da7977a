"""The local stack's pure parts: supervisord config, port checks and messages, program list."""

from __future__ import annotations

import configparser
import shlex
import socket
from pathlib import Path

import pytest

from udagram.settings import Settings
from udagram.stack import control, seaweedfs, supervisor
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
    identities = (cwd / "identities.json").read_text()
    assert settings.aws_access_key_id in identities and settings.aws_secret_access_key in identities
    seaweedfs.prepare(settings, notifications=False)
    assert not (cwd / "notification.toml").exists()


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
