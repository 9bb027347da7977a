"""The processes of the local stack: command, ports, start stage and health check of each.

Stages start in order, each once the previous one is healthy:
1. SQS and DynamoDB stand-ins and the S3 event bridge (listening before SeaweedFS starts, as its
   filer drops the events it cannot deliver);
2. SeaweedFS (S3);
then the resources are created (tables, buckets, queues) and
3. (`SERVICES`) TorchServe, the API and the worker start.
With `UDAGRAM_MODE=aws` only stage 3 runs, against the AWS services the standard AWS variables name.

`api_processes` / `worker_processes` above 1 make one program per process (`api-1`, `api-2`, ...;
one alone keeps the plain name), each supervised, logged and health-checked on its own: the API
processes share the API port, and each process has its own metrics port (`instance_port`).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from udagram.settings import Settings
from udagram.stack import credentials, health, seaweedfs

SERVICES = 3  # the stage of TorchServe, API and worker: resources are created before it
REPO_ROOT = Path(__file__).resolve().parents[2]
DYNALITE = REPO_ROOT / "tools" / "node" / "node_modules" / "dynalite" / "cli.js"
# dynalite behind a refusal of browser requests (it answers them with CORS "*")
DYNALITE_SERVER = REPO_ROOT / "tools" / "node" / "dynalite-server.js"
BIN = Path(sys.executable).parent
# Process i's metrics port is the first one's + 10 * i: the API's (9401, 9411, ...) and the
# worker's (9400, 9410, ...) never meet, whatever the counts.
METRICS_PORT_STEP = 10


@dataclass(frozen=True)
class Port:
    port: int
    what: str
    env: str  # the variable that changes it


@dataclass(frozen=True)
class Program:
    name: str
    title: str
    command: list[str]
    stage: int
    ports: tuple[Port, ...]
    health: Callable[[Settings], None]
    directory: Path = REPO_ROOT
    environment: dict[str, str] = field(default_factory=dict)
    stop_wait_seconds: int = 15
    role: str = ""  # what it is when there are several of it ("api", "worker"); default: the name

    def __post_init__(self) -> None:
        if not self.role:
            object.__setattr__(self, "role", self.name)


def instance_port(first: int, index: int) -> int:
    """The metrics port of process `index` (from 0) of a role whose first process uses `first`."""
    return first + METRICS_PORT_STEP * index


def instance_names(role: str, count: int) -> list[str]:
    """`role` alone, or `role-1` ... `role-N`."""
    return [role] if count == 1 else [f"{role}-{i}" for i in range(1, count + 1)]


def _processes(role: credentials.Identity, title: str, count: int, metrics: Port,
               check: Callable[..., None], shared: tuple[Port, ...] = (),
               stop_wait_seconds: int = Program.stop_wait_seconds) -> list[Program]:
    """`count` programs running `udagram <role>` with the role's S3 identity, process i with its
    metrics port at `instance_port(metrics.port, i)` (given to it as `metrics.env`) and health-checked
    there; `shared` ports (the API's) are declared, and so checked free, once."""
    found = []
    for index, name in enumerate(instance_names(role, count)):
        port = instance_port(metrics.port, index)
        suffix = "" if name == role else f" ({name})"
        found.append(Program(
            name=name,
            role=role,
            title=title + suffix,
            command=[str(BIN / "udagram"), role],
            environment={**_identity(role), metrics.env: str(port)},
            stage=SERVICES,
            ports=(*(shared if index == 0 else ()), Port(port, metrics.what + suffix, metrics.env)),
            health=partial(check, metrics_port=port),
            stop_wait_seconds=stop_wait_seconds,
        ))
    return found


def _identity(name: credentials.Identity) -> dict[str, str]:
    """A program's S3 identity (`udagram.stack.credentials`): a name here, its keys in a private file."""
    return {"UDAGRAM_LOCAL_IDENTITY": name}


def storage(settings: Settings) -> list[Program]:
    host = settings.host
    weed_ports = tuple(
        Port(port, f"SeaweedFS {flag.replace('.port.grpc', ' gRPC').replace('.port', '')}",
             "UDAGRAM_SEAWEEDFS_PORT_BASE")
        for flag, port in seaweedfs.internal_ports(settings).items()
    )
    return [
        Program(
            name="s3",
            title="S3 (SeaweedFS)",
            command=seaweedfs.command(settings),
            ports=(Port(settings.s3_port, "S3 (SeaweedFS)", "UDAGRAM_S3_PORT"), *weed_ports),
            health=health.s3,
            stage=2,
            directory=seaweedfs.workdir(settings),  # it reads notification.toml from here
        ),
        Program(
            name="sqs",
            title="SQS (moto server, in memory)",
            command=[str(BIN / "moto_server"), "-H", host, "-p", str(settings.sqs_port)],
            # moto grants every origin CORS: web pages the user opens could read and change the queues
            environment={"MOTO_DISABLE_GLOBAL_CORS": "true"},
            stage=1,
            ports=(Port(settings.sqs_port, "SQS (moto)", "UDAGRAM_SQS_PORT"),),
            health=health.sqs,
        ),
        Program(
            name="dynamodb",
            title="DynamoDB (dynalite)",
            command=[
                shutil.which("node") or "node",
                str(DYNALITE_SERVER),
                "--host", host,
                "--port", str(settings.dynamodb_port),
                "--path", str(settings.data_dir / "dynamodb"),
            ],
            stage=1,
            ports=(Port(settings.dynamodb_port, "DynamoDB (dynalite)", "UDAGRAM_DYNAMODB_PORT"),),
            health=health.dynamodb,
        ),
        Program(
            name="s3-events",
            title="S3 event bridge",
            command=[sys.executable, "-m", "udagram.stack.s3_events"],
            environment=_identity("none"),  # SQS only
            stage=1,
            ports=(Port(settings.s3_events_port, "S3 event bridge", "UDAGRAM_S3_EVENTS_PORT"),),
            health=health.s3_events,
        ),
    ]


def services(settings: Settings) -> list[Program]:
    """TorchServe, the API and the worker: each runs a subcommand of the `udagram` console script
    (named, not imported: the roles sit above this package)."""
    torchserve_dir = settings.data_dir / "torchserve"
    torchserve = Program(
        name="torchserve",
        title="TorchServe",
        command=[str(BIN / "udagram"), "model", "serve"],
        stage=SERVICES,
        ports=(
            Port(settings.torchserve_inference_port, "TorchServe inference", "UDAGRAM_TORCHSERVE_INFERENCE_PORT"),
            Port(settings.torchserve_management_port, "TorchServe management",
                 "UDAGRAM_TORCHSERVE_MANAGEMENT_PORT"),
            Port(settings.torchserve_metrics_port, "TorchServe metrics", "UDAGRAM_TORCHSERVE_METRICS_PORT"),
            Port(settings.torchserve_grpc_inference_port, "TorchServe gRPC inference",
                 "UDAGRAM_TORCHSERVE_GRPC_INFERENCE_PORT"),
            Port(settings.torchserve_grpc_management_port, "TorchServe gRPC management",
                 "UDAGRAM_TORCHSERVE_GRPC_MANAGEMENT_PORT"),
        ),
        health=health.torchserve,
        # one TorchServe instance per TMPDIR (pid file, worker sockets); logs under .data
        environment={
            **_identity("none"),
            "TMPDIR": str(torchserve_dir / "tmp"),
            "LOG_LOCATION": str(settings.data_dir / "logs" / "torchserve"),
            "METRICS_LOCATION": str(settings.data_dir / "logs" / "torchserve"),
        },
        stop_wait_seconds=90,  # `model serve` waits up to ~70 s for Java and its workers
    )
    api = _processes(
        "api", "GraphQL API and web page", settings.api_processes,
        Port(settings.api_metrics_port, "API metrics", "UDAGRAM_API_METRICS_PORT"), health.api,
        shared=(Port(settings.api_port, "API", "UDAGRAM_API_PORT"),),
    )
    worker = _processes(
        "worker", "Worker", settings.worker_processes,
        Port(settings.worker_metrics_port, "worker metrics", "UDAGRAM_WORKER_METRICS_PORT"), health.worker,
        stop_wait_seconds=int(settings.worker_shutdown_grace_seconds) + 10,
    )
    return [torchserve, *api, *worker]


def programs(settings: Settings) -> list[Program]:
    if settings.mode == "aws":
        return services(settings)
    return storage(settings) + services(settings)
