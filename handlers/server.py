"""Run TorchServe: effective config, command line, readiness, and a process wrapper.

Used by `udagram model serve` (the local stack runs it under supervisord), by the test fixtures
and by bench/serving.py, so all three start TorchServe the same way:

- config: the repo's config.properties with ports and paths overridden from Settings, rendered
  into a run directory (one per instance);
- environment: its own TMPDIR (pid file, worker sockets and extracted models live there, so two
  instances never collide) and LOG_LOCATION/METRICS_LOCATION (logs stay out of the cwd);
- output to a file, never a pipe (the Java child inherits it and a pipe would hang the caller);
- the management API behind a guard: TorchServe's own management listener is a Unix socket in the
  run directory, and the management port is served by `ManagementGuard`, a small proxy in this
  process that refuses browser requests. Any web page the user opens can send a form POST to a
  loopback port (no CORS needed to send it), and TorchServe's management API executes it
  (register a model, change workers). Programs (`udagram model`, health checks, tests, bench)
  send no Origin or Sec-Fetch-* header and pass through. Why not TorchServe's token auth: its
  tokens expire (60 min by default, renewed through its API key), live in a key_file.json in
  TorchServe's working directory, and guard inference too, so the worker, in production a
  separate service, would need TorchServe's keys for predictions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from udagram.model_management import ManagementClient
from udagram.waiting import poll_until

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.properties"
# Environment of the model workers (inherited through Java); bench/serving.py gives its raw
# baselines the same. docker/model-server.Dockerfile sets the same values: keep them in step.
# - OpenMP threads that sleep instead of spinning between parallel regions: on a machine whose
#   cores are shared (the whole stack runs on one laptop) spinning made 2-thread inference up to
#   6x slower here (1.7-2.6 vs 12-16 img/s in-process under load).
# - glibc malloc keeping freed memory: by default it serves the TorchScript model's activation
#   buffers (several MB each) with mmap and hands them back to the kernel after every forward:
#   ~4,700 minor page faults (~26 ms of CPU) per image served. A 32 MiB mmap threshold keeps them
#   on the heap and a 256 MiB trim threshold keeps the heap from shrinking: 0-160 faults per image
#   (issue 12: either one alone is worse). ONNX Runtime reuses its own arena and faults little.
WORKER_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "268435456",
}
READY_TIMEOUT_S = 120.0
READY_POLL_S = 0.25


class TorchServeError(RuntimeError):
    """TorchServe did not start, or stopped while we waited for it."""


@dataclass(frozen=True)
class Endpoints:
    """Where one TorchServe listens. Each field is set by the setting `torchserve_<field>` (the host
    by `host`): `from_settings` reads them, `as_settings` writes them."""

    host: str
    inference_port: int
    management_port: int
    metrics_port: int
    grpc_inference_port: int
    grpc_management_port: int

    @staticmethod
    def _setting(field_name: str) -> str:
        return field_name if field_name == "host" else f"torchserve_{field_name}"

    @classmethod
    def from_settings(cls, settings: Any) -> Endpoints:
        return cls(**{f.name: getattr(settings, cls._setting(f.name)) for f in fields(cls)})

    def as_settings(self) -> dict[str, Any]:
        return {self._setting(f.name): getattr(self, f.name) for f in fields(self)}

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines (TorchServe's own reading: '#' comments, first '=' splits)."""
    properties: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def management_socket(run_dir: Path) -> Path:
    """TorchServe's real management listener; only `ManagementGuard` (and local processes) reach it."""
    return Path(run_dir) / "management.sock"


def render_config(
    endpoints: Endpoints,
    run_dir: Path,
    overrides: dict[str, str] | None = None,
    template: Path | None = None,
) -> Path:
    """Write run_dir/config.properties: the repo config (or `template`) with this instance's ports;
    management on a Unix socket (the management port is `ManagementGuard`'s)."""
    template = template or REPO_CONFIG
    properties = read_properties(template)
    properties.update(
        {
            "inference_address": endpoints.inference_url,
            "management_address": f"unix:{management_socket(run_dir)}",
            "use_native_io": "true",  # TorchServe listens on Unix sockets through Netty's epoll only
            "metrics_address": endpoints.metrics_url,
            "grpc_inference_address": endpoints.host,
            "grpc_management_address": endpoints.host,
            "grpc_inference_port": str(endpoints.grpc_inference_port),
            "grpc_management_port": str(endpoints.grpc_management_port),
        }
    )
    properties.update(overrides or {})
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "config.properties"
    lines = [f"# rendered from {template} by handlers/server.py; edit that file, not this one"]
    lines += [f"{key}={value}" for key, value in properties.items()]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def torchserve_executable() -> str:
    # Prefer the torchserve next to this interpreter (the venv), so `python -m` and tests agree.
    sibling = Path(sys.executable).with_name("torchserve")
    return str(sibling) if sibling.exists() else (shutil.which("torchserve") or "torchserve")


# TorchServe's logging: no per-prediction access, debug or metric lines (see the file).
LOG_CONFIG = Path(__file__).with_name("log4j2.xml")


def torchserve_command(config: Path, model_store: Path, models: dict[str, str],
                       log_config: Path | None = LOG_CONFIG) -> list[str]:
    """The foreground TorchServe command line loading `models` ({name: archive file}) at start;
    `log_config` None: TorchServe's own logging (the benchmark's baselines)."""
    command = [
        torchserve_executable(),
        "--start",
        "--foreground",
        "--ncs",  # no config snapshots: what runs is what the command line and archives say
        "--model-store",
        str(Path(model_store).resolve()),
        "--ts-config",
        str(config),
    ]
    if log_config is not None:
        command += ["--log-config", str(log_config)]
    if models:
        command += ["--models", *(f"{name}={archive}" for name, archive in models.items())]
    return command


def torchserve_env(
    run_dir: Path, log_dir: Path | None = None, worker_env: dict[str, str | None] | None = None
) -> dict[str, str]:
    """Environment of one instance. worker_env: None = WORKER_ENV unless the operator set those
    variables; otherwise exactly these values (None removes a variable)."""
    tmp = run_dir / "tmp"
    logs = log_dir or run_dir / "logs"
    tmp.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "TMPDIR": str(tmp),
            "TEMP": str(tmp),  # the launcher hands this to Java as java.io.tmpdir
            "LOG_LOCATION": str(logs),
            "METRICS_LOCATION": str(logs),
            # Workers are started by Java with this interpreter; they must find the venv's ts.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    if worker_env is None:
        for key, value in WORKER_ENV.items():
            env.setdefault(key, value)  # an operator's explicit choice wins
    else:
        for key, maybe in worker_env.items():
            if maybe is None:
                env.pop(key, None)
            else:
                env[key] = maybe
    return env


def is_ready(management_url: str, model_name: str) -> bool:
    return ManagementClient(management_url, model_name, timeout=5.0).ready()


def wait_until_ready(
    management_url: str,
    model_name: str,
    timeout: float = READY_TIMEOUT_S,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until a worker of `model_name` is READY (/ping answers long before that)."""

    def state() -> str:
        if process is not None and process.poll() is not None:
            return "exited"
        return "ready" if is_ready(management_url, model_name) else "starting"

    reached = poll_until(state, lambda found: found != "starting", timeout, READY_POLL_S)
    if reached == "exited":
        assert process is not None  # only a process can exit
        raise TorchServeError(f"TorchServe exited with code {process.returncode} before {model_name} was ready")
    if reached != "ready":
        raise TorchServeError(f"{model_name} had no READY worker at {management_url} after {timeout:.0f} s")


# Headers only browsers send: every cross-site request carries Origin (a form POST too) or the
# Sec-Fetch-* metadata; programs send neither.
BROWSER_HEADERS = ("origin", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "sec-fetch-user")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}
GUARD_START_TIMEOUT_S = 30.0


def refusal(headers: Any, hosts: set[str]) -> str | None:
    """Why a management request is refused (it comes from a browser), or None."""
    sent = [name for name in BROWSER_HEADERS if name in headers]
    if sent:
        return (f"TorchServe's management API refuses browser requests (this one sent {', '.join(sent)}): "
                "use `udagram model` or another program")
    host = httpx.URL(f"http://{headers.get('host', '127.0.0.1')}/").host
    if host not in hosts:  # a DNS-rebinding page: a name of its own, resolving to loopback
        return f"TorchServe's management API answers only {', '.join(sorted(hosts))}, not {host!r}"
    return None


class ManagementGuard:
    """The management port: refuses browser requests, forwards the rest to TorchServe's Unix socket.

    An HTTP server (uvicorn, in a thread of the process that runs TorchServe) so each request is
    parsed by a real HTTP parser before its headers are judged. Upstream calls may take minutes
    (synchronous registration): the guard waits as long as its client does.
    """

    def __init__(self, host: str, port: int, upstream: Path) -> None:
        self.host, self.port, self.upstream = host, port, upstream
        self.hosts = {host, "127.0.0.1", "localhost", "::1"}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.upstream)),
                                         base_url="http://torchserve",
                                         timeout=httpx.Timeout(None, connect=5.0)) as app.state.upstream:
                yield

        async def forward(request: Request) -> Response:
            reason = refusal(request.headers, self.hosts)
            if reason:
                return JSONResponse({"code": 403, "type": "BrowserRequestRefused", "message": reason}, 403)
            try:
                answer = await request.app.state.upstream.request(
                    request.method, request.url.path, params=request.url.query or None, content=await request.body(),
                    headers={k: v for k, v in request.headers.items() if k not in HOP_BY_HOP})
            except httpx.TransportError as exc:
                return JSONResponse({"code": 503, "type": "ServiceUnavailable",
                                     "message": f"TorchServe is not answering: {type(exc).__name__}"}, 503)
            return Response(answer.content, answer.status_code,
                            {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP})

        methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
        return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)

    def start(self) -> None:
        config = uvicorn.Config(self._app(), host=self.host, port=self.port, log_config=None, access_log=False,
                                log_level="warning", loop="asyncio", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="torchserve-management-guard", daemon=True)
        self._thread.start()
        server, thread = self._server, self._thread
        poll_until(lambda: server.started or not thread.is_alive(), bool, GUARD_START_TIMEOUT_S, 0.02)
        if not server.started:
            raise TorchServeError(f"the management guard could not listen on {self.host}:{self.port}")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None


class TorchServeProcess:
    """One TorchServe instance in its own run directory (config, TMPDIR, logs, stdout).

    start() returns once the model has a READY worker; stop() ends the whole process group
    (launcher, Java frontend, Python workers) and waits for it; restart() is stop() + start()
    on the same ports, store and models.
    """

    def __init__(
        self,
        endpoints: Endpoints,
        model_store: Path,
        run_dir: Path,
        models: dict[str, str],
        model_name: str = "classifier",
        config_overrides: dict[str, str] | None = None,
        log_dir: Path | None = None,
        worker_env: dict[str, str | None] | None = None,  # see torchserve_env
        config_template: Path | None = None,  # default: the repository's config.properties
        log_config: Path | None = LOG_CONFIG,  # None: TorchServe's own logging
    ) -> None:
        self.endpoints = endpoints
        self.model_store = Path(model_store).resolve()
        self.run_dir = Path(run_dir).resolve()
        self.models = dict(models)
        self.model_name = model_name
        self.config_overrides = dict(config_overrides or {})
        self.log_dir = Path(log_dir).resolve() if log_dir else self.run_dir / "logs"
        self.worker_env = worker_env
        self.config_template = config_template
        self.log_config = log_config
        self.process: subprocess.Popen[bytes] | None = None
        self.guard: ManagementGuard | None = None

    @property
    def inference_url(self) -> str:
        return self.endpoints.inference_url

    @property
    def management_url(self) -> str:
        return self.endpoints.management_url

    @property
    def metrics_url(self) -> str:
        return self.endpoints.metrics_url

    @property
    def stdout_path(self) -> Path:
        return self.run_dir / "torchserve.out"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> subprocess.Popen[bytes]:
        """Start without waiting for readiness (the foreground CLI waits differently)."""
        if self.is_running():
            raise TorchServeError("this TorchServe instance is already running")
        config = render_config(self.endpoints, self.run_dir, self.config_overrides, self.config_template)
        command = torchserve_command(config, self.model_store, self.models, self.log_config)
        management_socket(self.run_dir).unlink(missing_ok=True)  # a killed instance's (TorchServe won't bind)
        self.guard = ManagementGuard(self.endpoints.host, self.endpoints.management_port,
                                     management_socket(self.run_dir))
        self.guard.start()
        with open(self.stdout_path, "ab") as out:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=torchserve_env(self.run_dir, self.log_dir, self.worker_env),
                cwd=self.run_dir,
                start_new_session=True,  # its own process group: stop() can end Java and workers too
            )
        return self.process

    def start(self, timeout: float = READY_TIMEOUT_S) -> TorchServeProcess:
        process = self.launch()
        try:
            wait_until_ready(self.management_url, self.model_name, timeout, process)
        except TorchServeError as exc:
            self.stop()
            raise TorchServeError(f"{exc}; see {self.stdout_path} and {self.log_dir}") from exc
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the group, wait, then SIGKILL whatever is left (Java exits seconds after)."""
        if self.guard is not None:
            self.guard.stop()
            self.guard = None
        if self.process is None:
            return
        pgid = self.process.pid  # session leader: pgid == pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        if not _wait_group_gone(pgid, timeout):
            _signal_group(pgid, signal.SIGKILL)
            _wait_group_gone(pgid, 10.0)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, timeout: float = READY_TIMEOUT_S) -> TorchServeProcess:
        self.stop()
        return self.start(timeout)

    def settings_overrides(self) -> dict[str, Any]:
        """Settings fields pointing at this instance: `Settings(**ts.settings_overrides())`."""
        return {
            **self.endpoints.as_settings(),
            "torchserve_inference_url": self.inference_url,
            "torchserve_management_url": self.management_url,
            "model_name": self.model_name,
            "model_store": self.model_store,
        }

    def __enter__(self) -> TorchServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    return not poll_until(lambda: _group_alive(pgid), lambda alive: not alive, timeout, 0.1)
