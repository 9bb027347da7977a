"""The local stack's S3 credentials: random per install, one pair per identity, in `<data_dir>/secrets/`.

SeaweedFS, the local S3, knows exactly these identities (`udagram.stack.seaweedfs.identities`
gives each its permissions):
- `admin`: creates and configures the buckets (`udagram up`; also the default of a command run by
  hand, e.g. `udagram reprocess` or the aws CLI with the keys of `secrets/admin.json`);
- `api`: the GraphQL API (presigned uploads and downloads, deleting an image's objects);
- `worker`: the image worker (reads and deletes originals, writes processed copies).
A process chooses its identity with `UDAGRAM_LOCAL_IDENTITY` (the local stack sets it per program)
and reads only that file. `none` (the S3 event bridge, TorchServe) gets fresh random keys that no
S3 identity has: enough for the SQS and DynamoDB stand-ins, which check no credentials.

The files are written once, on the first `udagram up` (mode 0600, in a 0700 directory), so the
keys survive restarts and never appear in the source, a command line or supervisord's config.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Literal

Identity = Literal["admin", "api", "worker", "none"]
STORED: tuple[Identity, ...] = ("admin", "api", "worker")  # the identities SeaweedFS knows


def directory(data_dir: Path) -> Path:
    return Path(data_dir) / "secrets"


def path(data_dir: Path, identity: Identity) -> Path:
    return directory(data_dir) / f"{identity}.json"


def generate() -> dict[str, str]:
    """A new random key pair, shaped like AWS's (20-character id, 40-character secret)."""
    return {
        "accessKeyId": "UDAGRAM" + secrets.token_hex(16)[:13].upper(),
        "secretAccessKey": secrets.token_urlsafe(30),
    }


def read(data_dir: Path, identity: Identity) -> dict[str, str] | None:
    """The key pair of `identity`, or None before the first `udagram up` wrote it."""
    if identity == "none":
        return generate()
    try:
        found = json.loads(path(data_dir, identity).read_text())
    except FileNotFoundError:
        return None
    return {"accessKeyId": found["accessKeyId"], "secretAccessKey": found["secretAccessKey"]}


def store(data_dir: Path, identity: Identity, keys: dict[str, str]) -> None:
    """Write `identity`'s key file unless it exists (then the existing keys stay)."""
    folder = directory(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    target = path(data_dir, identity)
    if target.exists():
        target.chmod(0o600)
        return
    # Written privately under a temporary name, then linked into place: a concurrent first start
    # (compose starts containers side by side) keeps whichever file landed first.
    temporary = folder / f".{identity}.{secrets.token_hex(4)}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(keys, file)
    try:
        os.link(temporary, target)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


def ensure(data_dir: Path) -> dict[Identity, dict[str, str]]:
    """Write the missing key files (existing ones are kept); returns every stored identity's keys."""
    for identity in STORED:
        store(data_dir, identity, generate())
    return {identity: read(data_dir, identity) for identity in STORED}  # type: ignore[misc]
