"""`up`, `down` and `status` of the local stack (the commands and the tests' `local_stack`
fixture both call these).

`up`: refuse taken ports with a message naming the port and the variable that moves it, start
supervisord in the background, start the storage stages (see `programs`) waiting until each is
healthy, create the resources (tables, buckets, queue + DLQ), start TorchServe, the API and the
worker, wait until healthy. `down`: ask supervisord to stop everything, wait for it to exit,
then kill whatever of the stack is left (e.g. TorchServe's Java) and wait until none remains.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import xmlrpc.client
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from udagram.settings import Settings
from udagram.stack import seaweedfs, supervisor
from udagram.stack.health import Unhealthy
from udagram.stack.programs import DYNALITE, SERVICES, Port, Program, instance_port, programs
from udagram.waiting import poll_until

Say = Callable[[str], None]


# Set in the environment of every process of a stack (not a setting): `down` finds them by it.
STACK_MARKER = "UDAGRAM_STACK_DATA_DIR"


class StackError(RuntimeError):
    """A failure `udagram up/down` reports as a message (no traceback)."""


class PortInUse(StackError):
    pass


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not "taken"
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def port_message(host: str, taken: list[Port]) -> str:
    lines = [
        f"port {p.port} on {host} is already in use (needed by {p.what}); "
        f"free it or choose another port with {p.env}=<port>"
        for p in taken
    ]
    return "\n".join(lines)


def check_ports(settings: Settings, progs: list[Program]) -> None:
    declared: dict[int, Port] = {}
    for port in (port for program in progs for port in program.ports):
        if port.port in declared:  # e.g. a moved port landing on another process's metrics port
            first = declared[port.port]
            raise PortInUse(f"port {port.port} is wanted by both {first.what} ({first.env}) and {port.what} "
                            f"({port.env}): move one of them")
        declared[port.port] = port
    taken = [port for port in declared.values() if port_taken(settings.host, port.port)]
    if taken:
        message = port_message(settings.host, taken)
        if marked(settings.data_dir):
            message += "\nprocesses of a previous stack in this data dir are still running: `udagram down` stops them"
        raise PortInUse(message)


def urls(settings: Settings) -> dict[str, str]:
    found = {
        "web page": f"{settings.public_url}/",
        "GraphQL": f"{settings.public_url}/graphql",
        "TorchServe inference": settings.torchserve_inference_url,
        "TorchServe management": settings.torchserve_management_url,
        "TorchServe metrics": f"http://{settings.host}:{settings.torchserve_metrics_port}/metrics",
    }
    for role, host, first, count in (
        ("API", settings.api_metrics_host, settings.api_metrics_port, settings.api_processes),
        ("worker", settings.host, settings.worker_metrics_port, settings.worker_processes),
    ):
        for index in range(count):
            number = f" {index + 1}" if count > 1 else ""
            found[f"{role}{number} metrics"] = f"http://{host}:{instance_port(first, index)}/metrics"
    if settings.mode == "local":
        stand_ins = {"S3": settings.s3_endpoint_url, "SQS": settings.sqs_endpoint_url,
                     "DynamoDB": settings.dynamodb_endpoint_url}
        found |= {name: url for name, url in stand_ins.items() if url}  # always set in local mode
    return found


def _state(proxy, name: str) -> dict:
    try:
        return proxy.supervisor.getProcessInfo(name)
    except xmlrpc.client.Fault as exc:
        raise StackError(f"the running supervisord does not know {name!r} ({exc.faultString}): it was started "
                         "with another set of programs; run `udagram down` then `udagram up`") from None


def check_health(program: Program, settings: Settings) -> str:
    """"healthy", or why not."""
    try:
        program.health(settings)
    except Unhealthy as exc:
        return str(exc)
    except Exception as exc:  # an unexpected answer is a failed check, not a crash of `up`/`status`
        return f"{type(exc).__name__}: {exc}"
    return "healthy"


def _wait_healthy(settings: Settings, proxy, group: list[Program], p: supervisor.Paths, timeout: float,
                  say: Say) -> None:
    pending = {program.name: program for program in group}
    reasons: dict[str, str] = {}

    def all_healthy() -> bool:
        for name, program in list(pending.items()):
            info = _state(proxy, name)
            # EXITED/BACKOFF are retried by supervisord (autorestart); FATAL means it gave up.
            if info["statename"] in ("FATAL", "STOPPED"):
                raise StackError(
                    f"{program.title} ({name}) is {info['statename']}: {info.get('spawnerr') or 'it exited'}\n"
                    f"last lines of {p.log(name)}:\n{supervisor.tail(p.log(name))}"
                )
            result = check_health(program, settings)
            if result != "healthy":
                reasons[name] = result
                continue
            say(f"  {program.title}: healthy")
            del pending[name]
        return not pending

    if not poll_until(all_healthy, done=bool, timeout=timeout, interval=0.5):
        details = "\n".join(
            f"- {pending[n].title} ({n}): {reasons.get(n, 'not checked')}\n"
            f"  last lines of {p.log(n)}:\n{supervisor.tail(p.log(n), 15)}"
            for n in pending
        )
        raise StackError(f"not healthy after {timeout:.0f}s:\n{details}")


def _prepare(settings: Settings, progs: list[Program]) -> None:
    names = {program.name for program in progs}
    if "dynamodb" in names and not DYNALITE.exists():
        raise StackError(f"dynalite is not installed ({DYNALITE} missing): run `npm ci --prefix tools/node` "
                         "(`make up` does)")
    if "s3" in names:
        seaweedfs.prepare(settings, notifications=True)
    (settings.data_dir / "dynamodb").mkdir(parents=True, exist_ok=True)


SECRET_FIELDS = {"aws_access_key_id", "aws_secret_access_key"}
# Locally every program uses its own generated identity: the caller's AWS keys (perhaps real ones,
# which the stand-ins don't know anyway) are not passed on.
AWS_KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _settings_file(settings: Settings) -> Path:
    return settings.data_dir / "stack-settings.json"


def running_settings(settings: Settings) -> Settings:
    """The settings the running stack was started with (ports, names...), so `status` checks
    the right ports even from a shell without the same UDAGRAM_* variables; secrets excluded."""
    try:
        saved = json.loads(_settings_file(settings).read_text())
    except (OSError, ValueError):
        return settings
    keep = {name: getattr(settings, name) for name in SECRET_FIELDS}
    return Settings(**{**saved, **keep})


def up(settings: Settings, env: Mapping[str, str] | None = None, timeout: float = 300,
       say: Say = lambda _: None) -> dict[str, str]:
    """Start the stack (or the parts of it not running) and wait until healthy; returns the URLs.

    `env` is the environment every process gets (default: this process's); it must produce
    `settings`, so that all processes share one configuration.
    """
    from udagram.resources import ensure_resources

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    env = dict(os.environ if env is None else env)
    env["UDAGRAM_DATA_DIR"] = str(settings.data_dir)  # absolute: programs run in other directories
    env[STACK_MARKER] = str(settings.data_dir)
    env["UDAGRAM_MODEL_STORE"] = str(Path(settings.model_store).resolve())
    env.setdefault("PYTHONUNBUFFERED", "1")
    if settings.mode == "local":
        for name in AWS_KEY_VARIABLES:
            env.pop(name, None)
    progs = programs(settings)
    p = supervisor.paths(settings)
    proxy = supervisor.rpc(p)
    if supervisor.running_pid(p) is None:
        check_ports(settings, progs)
        _prepare(settings, progs)
        _settings_file(settings).write_text(settings.model_dump_json(exclude=SECRET_FIELDS, indent=2))
        pid = supervisor.start_daemon(p, progs, env)
        say(f"supervisord started (pid {pid}); logs in {p.logs}")
    else:
        say("supervisord is already running; starting what is stopped")
    # `up` creates the buckets: the one job of the admin identity (its keys exist from here on)
    settings = settings.as_local_identity("admin")
    for stage in sorted({program.stage for program in progs}):
        group = [program for program in progs if program.stage == stage]
        if stage == SERVICES:
            ensure_resources(settings)
            say("  resources ready: tables, buckets, uploads queue + dead-letter queue")
        for program in group:
            if _state(proxy, program.name)["statename"] not in ("RUNNING", "STARTING"):
                say(f"starting {program.title} ({program.name})")
                proxy.supervisor.startProcess(program.name, False)
        _wait_healthy(settings, proxy, group, p, timeout, say)
    return urls(settings)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: state ppid pgrp session ... (starttime
    is index 19), or None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _all_stats() -> dict[int, list[str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            found[int(entry.name)] = fields
    return found


def session_members(sid: int) -> list[int]:
    return [pid for pid, fields in _all_stats().items() if int(fields[3]) == sid]


def process_tree(root: int) -> dict[int, str]:
    """`root`'s live descendants and session members, as {pid: start time} (the start time tells
    a survivor from a new process that reused its pid). Descendants include processes that left
    the session, e.g. TorchServe's Java started in a new session by `udagram model serve`."""
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    found |= {pid for pid, fields in stats.items() if int(fields[3]) == root}
    found.discard(root)
    return {pid: stats[pid][19] for pid in found if pid in stats}


def survivors(tree: dict[int, str]) -> list[int]:
    """The processes of a `process_tree` snapshot still alive."""
    return [pid for pid, started in tree.items() if (f := _stat(pid)) and f[0] != "Z" and f[19] == started]


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The `pids` still alive after waiting up to `timeout` seconds for them to exit."""
    return poll_until(lambda: [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)],
                      done=lambda alive: not alive, timeout=timeout, interval=0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def marked(data_dir: Path) -> list[int]:
    """Live processes started by a stack in `data_dir`, found by the STACK_MARKER variable every
    process of the stack inherits (finds orphans of a supervisord that was killed -9)."""
    needle = f"{STACK_MARKER}={data_dir.resolve()}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes() and not _zombie(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _kill(pids: list[int], say: Say) -> None:
    say(f"killing stragglers: {pids}")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    left = _wait_gone(pids, 15)
    if left:
        raise StackError(f"processes {left} survived SIGKILL")


def down(settings: Settings, timeout: float = 240, say: Say = lambda _: None) -> bool:
    """Stop everything; returns False if the stack was not running (orphans of a killed
    supervisord are still killed). Raises StackError if a process survives SIGKILL."""
    p = supervisor.paths(settings)
    pid = supervisor.running_pid(p)
    if pid is None:
        orphans = marked(settings.data_dir)
        if orphans:
            say("supervisord is gone but processes of this stack are left")
            _kill(orphans, say)
        return False
    proxy = supervisor.rpc(p)
    tree = process_tree(pid)
    say(f"stopping supervisord (pid {pid}) and its programs")
    try:
        proxy.supervisor.shutdown()
    except (OSError, xmlrpc.client.Error):
        pass  # it may close the socket while answering
    # supervisord stops each program (SIGTERM to its group, SIGKILL after stopwaitsecs), then exits.
    if _wait_gone([pid], timeout):
        say(f"supervisord still running after {timeout:.0f}s: killing it")
        os.kill(pid, signal.SIGKILL)
        _wait_gone([pid], 10)
    # Anything it spawned that is still alive is a straggler: its session (supervisord is a
    # session leader), every descendant seen before the shutdown, anything carrying the marker.
    stragglers = sorted(set(survivors(tree)) | set(session_members(pid)) | set(marked(settings.data_dir)))
    if stragglers:
        _kill(stragglers, say)
    return True


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    title: str
    state: str
    pid: int | None
    health: str  # "healthy" or the reason

    @property
    def ok(self) -> bool:
        return self.state == "RUNNING" and self.health == "healthy"


def status(settings: Settings) -> list[ProcessStatus] | None:
    """Each program's supervisord state and health; None when the stack is not running."""
    p = supervisor.paths(settings)
    if supervisor.running_pid(p) is None:
        return None
    settings = running_settings(settings)
    proxy = supervisor.rpc(p)
    infos = {info["name"]: info for info in proxy.supervisor.getAllProcessInfo()}
    progs = [program for program in programs(settings) if program.name in infos]

    def check(program: Program) -> ProcessStatus:
        info = infos[program.name]
        result = check_health(program, settings)
        return ProcessStatus(program.name, program.title, info["statename"], info["pid"] or None, result)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(check, progs))
