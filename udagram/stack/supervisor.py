"""supervisord plumbing: the config file, the daemon and its XML-RPC control socket.

Everything lives under `settings.data_dir`: `supervisord.conf`, `supervisord.pid`, the control
socket `supervisor.sock` (moved to the temp dir when the path is too long for a unix socket) and
the logs in `logs/` (one file per program, `logs/supervisord.log`).

Programs are declared with `autostart=false`: `udagram up` starts them stage by stage, waiting
for each stage to be healthy. Each program runs in its own process group and is stopped as a
group (`stopasgroup`/`killasgroup`), so children such as TorchServe's Java frontend and its
Python workers go with it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from udagram.settings import Settings
from udagram.stack.programs import Program
from udagram.waiting import poll_until

MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


@dataclass(frozen=True)
class Paths:
    root: Path
    conf: Path
    pidfile: Path
    socket: Path
    logs: Path

    def log(self, program: str) -> Path:
        return self.logs / f"{program}.log"


def paths(settings: Settings) -> Paths:
    root = settings.data_dir.resolve()
    socket = root / "supervisor.sock"
    if len(str(socket)) > MAX_SOCKET_PATH:
        digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
        socket = Path(tempfile.gettempdir()) / f"udagram-supervisor-{digest}.sock"
    return Paths(root, root / "supervisord.conf", root / "supervisord.pid", socket, root / "logs")


def _value(text: str) -> str:
    # supervisord expands %(name)s in values: a literal % is written %%.
    return text.replace("%", "%%")


def _environment(env: Mapping[str, str]) -> str:
    return ",".join(f'{key}="{_value(value)}"' for key, value in env.items())


def render_config(p: Paths, programs: list[Program]) -> str:
    """supervisord.conf for these programs. No secrets: the environment (UDAGRAM_*, AWS_*) is
    inherited from the process that starts supervisord, so every program shares it."""
    lines = [
        "; Written by `udagram up`; rewritten at each start.",
        "[unix_http_server]",
        f"file={_value(str(p.socket))}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_value(str(p.logs / 'supervisord.log'))}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        f"pidfile={_value(str(p.pidfile))}",
        f"childlogdir={_value(str(p.logs))}",
        f"directory={_value(str(p.root))}",
        "identifier=udagram",
        "nodaemon=false",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_value(str(p.socket))}",
        "",
    ]
    for program in programs:
        lines += [
            f"[program:{program.name}]",
            f"command={_value(shlex.join(program.command))}",
            f"directory={_value(str(program.directory))}",
            f"priority={program.stage * 10}",
            "autostart=false",
            "autorestart=true",
            "startsecs=1",
            "startretries=3",
            "stopsignal=TERM",
            f"stopwaitsecs={program.stop_wait_seconds}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_value(str(p.log(program.name)))}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
        ]
        if program.environment:
            lines.append(f"environment={_environment(program.environment)}")
        lines.append("")
    return "\n".join(lines)


def rpc(p: Paths) -> Any:
    """A proxy to supervisord's XML-RPC interface on the unix socket (what supervisorctl uses)."""
    transport = SupervisorTransport(None, None, serverurl=f"unix://{p.socket}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport, allow_none=True)


def running_pid(p: Paths) -> int | None:
    """supervisord's pid if it answers on its socket, else None."""
    if not p.socket.exists():
        return None
    try:
        proxy = rpc(p)
        if proxy.supervisor.getState()["statename"] != "RUNNING":
            return None
        return int(proxy.supervisor.getPID())
    except (OSError, xmlrpc.client.Error):
        return None


def start_daemon(p: Paths, programs: list[Program], env: Mapping[str, str], timeout: float = 30) -> int:
    """Write the config and start supervisord in the background; returns its pid."""
    p.logs.mkdir(parents=True, exist_ok=True)
    for program in programs:
        for key in ("TMPDIR", "LOG_LOCATION", "METRICS_LOCATION"):
            if key in program.environment:
                Path(program.environment[key]).mkdir(parents=True, exist_ok=True)
    p.conf.write_text(render_config(p, programs))
    if p.socket.exists():
        p.socket.unlink()  # stale, from a supervisord that did not exit cleanly
    supervisord = Path(sys.executable).parent / "supervisord"
    # supervisord daemonizes (forks, setsid) and returns once it is detached.
    subprocess.run([str(supervisord), "-c", str(p.conf)], env=dict(env), check=True, cwd=p.root,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pid = poll_until(lambda: running_pid(p), done=bool, timeout=timeout, interval=0.1)
    if pid:
        return pid
    raise RuntimeError(f"supervisord did not answer on {p.socket} within {timeout:.0f}s; see {p.logs}/supervisord.log")


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
