"""The processes of the local stack: command, ports, start stage and health check of each.

Stages start in order, each once the previous one is healthy:
1. SQS and DynamoDB stand-ins and the S3 event bridge (listening before SeaweedFS starts, as its
   filer drops the events it cannot deliver);
2. SeaweedFS (S3);
then the resources are created (tables, buckets, queues) and
3. (`SERVICES`) TorchServe, the API and the worker start.
With `UDAGRAM_MODE=aws` only stage 3 runs, against the AWS services the standard AWS variables name.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from udagram.settings import Settings
from udagram.stack import credentials, health, seaweedfs

SERVICES = 3  # the stage of TorchServe, API and worker: resources are created before it
REPO_ROOT = Path(__file__).resolve().parents[2]
DYNALITE = REPO_ROOT / "tools" / "node" / "node_modules" / "dynalite" / "cli.js"
# dynalite behind a refusal of browser requests (it answers them with CORS "*")
DYNALITE_SERVER = REPO_ROOT / "tools" / "node" / "dynalite-server.js"
BIN = Path(sys.executable).parent


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


def _identity(name: credentials.Identity) -> dict[str, str]:
    """A program's S3 identity (`udagram.stack.credentials`): a name here, its keys in a private file."""
    return {"UDAGRAM_LOCAL_IDENTITY": name}


def _cli_has(*names: str) -> bool:
    """Whether `udagram <names...>` exists (the other roles' commands land while this one grows)."""
    from udagram.cli import app

    typer_app = app
    for i, name in enumerate(names):
        last = i == len(names) - 1
        if last:
            commands = [c.name or c.callback.__name__.replace("_", "-") for c in typer_app.registered_commands]
            return name in commands
        groups = {g.name: g.typer_instance for g in typer_app.registered_groups}
        if name not in groups:
            return False
        typer_app = groups[name]
    return False


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
    udagram = str(BIN / "udagram")
    programs = []
    if _cli_has("model", "serve"):
        torchserve_dir = settings.data_dir / "torchserve"
        programs.append(
            Program(
                name="torchserve",
                title="TorchServe",
                command=[udagram, "model", "serve"],
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
        )
    if _cli_has("api"):
        programs.append(
            Program(
                name="api",
                title="GraphQL API and web page",
                command=[udagram, "api"],
                environment=_identity("api"),
                stage=SERVICES,
                ports=(Port(settings.api_port, "API", "UDAGRAM_API_PORT"),
                       Port(settings.api_metrics_port, "API metrics", "UDAGRAM_API_METRICS_PORT")),
                health=health.api,
            )
        )
    if _cli_has("worker"):
        programs.append(
            Program(
                name="worker",
                title="Worker",
                command=[udagram, "worker"],
                environment=_identity("worker"),
                stage=SERVICES,
                ports=(Port(settings.worker_metrics_port, "worker metrics", "UDAGRAM_WORKER_METRICS_PORT"),),
                health=health.worker,
                stop_wait_seconds=int(settings.worker_shutdown_grace_seconds) + 10,
            )
        )
    return programs


def programs(settings: Settings) -> list[Program]:
    if settings.mode == "aws":
        return services(settings)
    return storage(settings) + services(settings)
