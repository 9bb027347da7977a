"""TorchServe's management API: the one client every program uses (`udagram model`, the model
server's readiness wait, health checks, `udagram reprocess`, the admin API, tests).

Model versions: list, describe, register, set-default, scale, remove; readiness. Thin wrappers:
each call is one or two HTTP requests; errors come back as ManagementError with a one-line message
that says what to do (unknown version, removing the default, server down). In the ground package
because the local stack's health checks (udagram/stack) use it too; it needs only httpx.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from udagram.settings import Settings

REGISTER_TIMEOUT_S = 180.0  # synchronous registration waits for the worker to load the model


class ManagementError(Exception):
    """A management operation that failed; str() is the one-line message for the user."""


@dataclass(frozen=True)
class ModelVersion:
    version: str
    is_default: bool
    archive: str
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay_ms: int
    worker_statuses: tuple[str, ...]
    ready_pids: tuple[int, ...] = ()  # process ids of the READY workers

    @property
    def ready_workers(self) -> int:
        return sum(status == "READY" for status in self.worker_statuses)


class ManagementClient:
    def __init__(self, management_url: str, model_name: str = "classifier", timeout: float = 30.0) -> None:
        self.base_url = management_url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float = 30.0) -> ManagementClient:
        return cls(settings.torchserve_management_url, settings.model_name, timeout)

    # --- HTTP --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, timeout: float | None = None, **params: Any) -> httpx.Response:
        url = f"{self.base_url}{path}"
        try:
            return httpx.request(method, url, params=params or None, timeout=timeout or self.timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ManagementError(
                f"TorchServe management API at {self.base_url} is not reachable; is the stack up? (make up)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ManagementError(f"TorchServe management API at {self.base_url} timed out on {method} {path}") from exc
        except httpx.TransportError as exc:  # e.g. the connection dropped mid-answer (TorchServe stopping)
            raise ManagementError(
                f"TorchServe management API at {self.base_url} failed on {method} {path}: {type(exc).__name__}"
            ) from exc

    @staticmethod
    def _message(response: httpx.Response) -> str:
        try:
            return str(response.json().get("message", response.text)).strip()
        except ValueError:
            return response.text.strip() or response.reason_phrase

    # --- queries -----------------------------------------------------------------------------

    def _described(self, path: str, doing: str) -> list[dict[str, Any]]:
        """GET a description (a list of versions); [] when TorchServe answers 404 (not registered)."""
        response = self._request("GET", path)
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise ManagementError(f"{doing} failed: {self._message(response)}")
        try:
            described = response.json()
        except ValueError as exc:
            raise ManagementError(f"{doing} failed: not JSON: {response.text[:200]!r}") from exc
        if not isinstance(described, list):
            raise ManagementError(f"{doing} failed: unexpected answer {response.text[:200]!r}")
        return described

    def versions(self) -> list[ModelVersion]:
        """Every registered version, default first."""
        described = self._described(f"/models/{self.model_name}/all", f"listing {self.model_name}")
        if not described:
            return []
        default = self.default_version()
        found = [self._version(item, default) for item in described]
        return sorted(found, key=lambda v: (not v.is_default, v.version))

    def default(self) -> ModelVersion | None:
        """The default version (what `/predictions/NAME` uses), None when none is registered."""
        described = self._described(f"/models/{self.model_name}", f"describing {self.model_name}")
        if not described:
            return None
        return self._version(described[0], str(described[0]["modelVersion"]))

    def default_version(self) -> str | None:
        found = self.default()
        return found.version if found else None

    def has_version(self, version: str) -> bool:
        return bool(self._described(f"/models/{self.model_name}/{version}", f"describing {self.model_name} {version}"))

    def ready(self) -> bool:
        """Whether a worker of any version is READY (TorchServe's /ping answers long before that);
        False while the server is unreachable or answers with an error."""
        try:
            described = self._described(f"/models/{self.model_name}/all", f"listing {self.model_name}")
        except ManagementError:
            return False
        return any(self._version(item, None).ready_workers for item in described)

    @staticmethod
    def _version(item: dict[str, Any], default: str | None) -> ModelVersion:
        return ModelVersion(
            version=str(item["modelVersion"]),
            is_default=str(item["modelVersion"]) == default,
            archive=str(item.get("modelUrl", "")),
            min_workers=int(item.get("minWorkers", 0)),
            max_workers=int(item.get("maxWorkers", 0)),
            batch_size=int(item.get("batchSize", 1)),
            max_batch_delay_ms=int(item.get("maxBatchDelay", 0)),
            worker_statuses=tuple(str(w.get("status", "?")) for w in item.get("workers", [])),
            ready_pids=tuple(int(w["pid"]) for w in item.get("workers", [])
                             if w.get("pid") and w.get("status") == "READY"),
        )

    def _require_version(self, version: str) -> list[ModelVersion]:
        versions = self.versions()
        if not versions:
            raise ManagementError(f"no {self.model_name} model is registered at {self.base_url}")
        if version not in {v.version for v in versions}:
            known = ", ".join(v.version for v in versions)
            raise ManagementError(f"{self.model_name} has no version {version!r} (registered: {known})")
        return versions

    # --- changes -----------------------------------------------------------------------------

    def register(self, archive: str, workers: int = 1) -> ModelVersion:
        """Register an archive file name from the server's model store; batching comes from it."""
        response = self._request(
            "POST",
            "/models",
            timeout=REGISTER_TIMEOUT_S,
            url=archive,
            initial_workers=workers,
            synchronous="true",
        )
        if response.status_code != 200:
            raise ManagementError(f"registering {archive} failed: {self._message(response)}")
        registered = self.versions()
        by_archive = [v for v in registered if v.archive == archive]
        if not by_archive:
            raise ManagementError(f"{archive} was accepted but does not appear under {self.model_name}")
        if by_archive[0].min_workers != workers:
            # TorchServe 0.12 starts the archive's own minWorkers (model-config.yaml), whatever
            # initial_workers says: scale to what was asked for.
            self.scale(by_archive[0].version, workers)
            return next(v for v in self.versions() if v.archive == archive)
        return by_archive[0]

    def set_default(self, version: str) -> None:
        self._require_version(version)
        response = self._request("PUT", f"/models/{self.model_name}/{version}/set-default")
        if response.status_code != 200:
            raise ManagementError(f"setting {version} as default failed: {self._message(response)}")

    def scale(self, version: str, workers: int) -> None:
        if workers < 0:
            raise ManagementError("the number of workers cannot be negative")
        self._require_version(version)
        response = self._request(
            "PUT",
            f"/models/{self.model_name}/{version}",
            timeout=REGISTER_TIMEOUT_S,
            min_worker=workers,
            max_worker=workers,
            synchronous="true",
        )
        if response.status_code not in (200, 202):
            raise ManagementError(f"scaling {version} failed: {self._message(response)}")

    def remove(self, version: str) -> None:
        versions = self._require_version(version)
        if any(v.version == version and v.is_default for v in versions):
            others = [v.version for v in versions if v.version != version]
            hint = f"set another default first (udagram model set-default {others[0]})" if others else (
                "it is the only version: removing it would stop all predictions"
            )
            raise ManagementError(f"version {version} is the default of {self.model_name}; {hint}")
        response = self._request("DELETE", f"/models/{self.model_name}/{version}")
        if response.status_code != 200:
            raise ManagementError(f"removing {version} failed: {self._message(response)}")


def stage_archive(archive: Path, model_store: Path) -> str:
    """TorchServe registers archives by file name from its model store: copy one in if needed."""
    archive = Path(archive)
    if not archive.exists():
        if archive.parent == Path(".") and (Path(model_store) / archive.name).exists():
            return archive.name  # a bare name already in the store
        raise ManagementError(f"archive {archive} not found (nor in the model store {model_store})")
    if archive.suffix != ".mar":
        raise ManagementError(f"{archive} is not a .mar archive (build one with: udagram model build)")
    target = Path(model_store) / archive.name
    if archive.resolve() != target.resolve():
        if target.exists():
            raise ManagementError(f"{target} already exists in the model store; rename the archive or use that one")
        Path(model_store).mkdir(parents=True, exist_ok=True)
        shutil.copy2(archive, target)
    return archive.name
