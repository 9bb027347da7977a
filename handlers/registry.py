"""The model registry: which versions TorchServe serves, kept across its restarts.

TorchServe runs with `--ncs` and forgets every version registered through its management API
when it restarts. So every `udagram model register / set-default / scale / remove` records what
TorchServe serves right after the change (each version's archive file name and worker count, and
the default) in a small JSON file, `<data_dir>/torchserve/registry.json`, and
`udagram model serve` starts TorchServe with the recorded default and registers the others again.

Why not TorchServe's own config snapshots: 0.12 restores a snapshot only when it is started
without `--ts-config`, and the snapshot then *is* the whole configuration (the ports and paths of
the day it was written, not those of the environment); one naming a deleted archive fails its
start. The file here is explicit, re-applied through the same management calls as the commands,
and an entry whose archive vanished is skipped with a warning while the rest is served.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel, ValidationError

from udagram.model_management import ManagementClient, ManagementError, ModelVersion


class RegistryError(Exception):
    """The registry file exists but cannot be read; str() says which file and why."""


class VersionEntry(BaseModel):
    archive: str  # file name in the model store
    workers: int


class Registry(BaseModel):
    model: str
    default: str | None = None
    versions: dict[str, VersionEntry] = {}

    @classmethod
    def of(cls, model: str, versions: list[ModelVersion]) -> Registry:
        return cls(
            model=model,
            default=next((v.version for v in versions if v.is_default), None),
            # min_workers: what register's initial_workers and scale set (max comes from the archive)
            versions={v.version: VersionEntry(archive=v.archive, workers=v.min_workers) for v in versions},
        )


def load(path: Path) -> Registry | None:
    """The recorded registry, None if there is none yet."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"cannot read the model registry {path}: {exc}") from exc
    try:
        return Registry.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RegistryError(f"the model registry {path} is damaged ({first['msg']} at "
                            f"{'.'.join(map(str, first['loc'])) or 'top level'})") from exc


def save(path: Path, registry: Registry) -> None:
    """Atomically: a reader (a starting server) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(registry.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def record(path: Path, client: ManagementClient) -> Registry:
    """Write what TorchServe serves now. Read and written under a lock, so of two commands run at
    once the later writer also read the later state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        versions = client.versions()
        if not versions:  # a server still starting or stopping: keep the last good record
            raise ManagementError(f"{client.base_url} serves no {client.model_name} version to record")
        registry = Registry.of(client.model_name, versions)
        save(path, registry)
    return registry


# --- start ---------------------------------------------------------------------------------------


@dataclass
class StartPlan:
    """What `udagram model serve` starts with (`default` via TorchServe's command line) and
    registers once it is up (`others`); `skipped`: versions left out, with why."""

    default: str
    default_archive: str
    default_workers: int | None  # recorded worker count of the default (None: the archive's own)
    others: dict[str, VersionEntry] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def plan_start(
    registry: Registry | None,
    model_store: Path,
    configured_default: str,
    configured_explicitly: bool,
    archive_for: Callable[[str], Path],
) -> StartPlan:
    """The recorded default wins over `model_default_version` unless that was set explicitly in
    the environment. `archive_for(version)` gives the archive to serve a version from when the
    registry has no (usable) entry for it; it may build it (the packaged 1.0)."""
    recorded = registry.versions if registry else {}
    store = Path(model_store)
    skipped: dict[str, str] = {}
    usable: dict[str, VersionEntry] = {}
    for version, entry in recorded.items():
        if (store / entry.archive).is_file():
            usable[version] = entry
        else:
            skipped[version] = f"its archive {entry.archive} is no longer in the model store {store}"
    default = configured_default
    if registry and registry.default and not configured_explicitly:
        default = registry.default
        if default not in usable:
            default = configured_default  # the recorded default cannot be served: fall back
    default_archive = usable[default].archive if default in usable else archive_for(default).name
    default_entry = usable.pop(default, None)
    return StartPlan(
        default=default,
        default_archive=default_archive,
        default_workers=default_entry.workers if default_entry else None,
        others=usable,
        skipped=skipped,
    )


def restore(client: ManagementClient, plan: StartPlan, say: Callable[[str], None]) -> list[str]:
    """Register the plan's other versions and give the default its recorded workers on a running
    TorchServe; a version that fails is reported and left out, the rest is served. Returns the
    versions that could not be restored."""
    failed = list(plan.skipped)
    for version, why in plan.skipped.items():
        say(f"warning: version {version} not restored: {why}")
    if plan.default_workers is not None:
        current = next((v for v in client.versions() if v.version == plan.default), None)
        if current is not None and current.min_workers != plan.default_workers:
            try:
                client.scale(plan.default, plan.default_workers)
            except ManagementError as exc:
                say(f"warning: version {plan.default} keeps {current.min_workers} worker(s): {exc}")
    for version, entry in plan.others.items():
        try:
            client.register(entry.archive, entry.workers)
        except ManagementError as exc:
            failed.append(version)
            say(f"warning: version {version} not restored: {exc}")
        else:
            say(f"restored version {version} from {entry.archive} ({entry.workers} worker(s))")
    return failed
