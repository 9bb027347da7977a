"""Model versions over TorchServe's management API: list, register, set-default, scale, remove.

Thin wrappers: each call is one or two HTTP requests; errors come back as ManagementError with a
one-line message that says what to do (unknown version, removing the default, server down).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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

    @property
    def ready_workers(self) -> int:
        return sum(status == "READY" for status in self.worker_statuses)


class ManagementClient:
    def __init__(self, management_url: str, model_name: str = "classifier", timeout: float = 30.0) -> None:
        self.base_url = management_url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout

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

    @staticmethod
    def _message(response: httpx.Response) -> str:
        try:
            return str(response.json().get("message", response.text)).strip()
        except ValueError:
            return response.text.strip() or response.reason_phrase

    # --- queries -----------------------------------------------------------------------------

    def versions(self) -> list[ModelVersion]:
        """Every registered version, default first."""
        response = self._request("GET", f"/models/{self.model_name}/all")
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise ManagementError(f"listing {self.model_name} failed: {self._message(response)}")
        default = self.default_version()
        found = [self._version(item, default) for item in response.json()]
        return sorted(found, key=lambda v: (not v.is_default, v.version))

    def default_version(self) -> str | None:
        response = self._request("GET", f"/models/{self.model_name}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ManagementError(f"describing {self.model_name} failed: {self._message(response)}")
        return str(response.json()[0]["modelVersion"])

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
