"""Health checks of the local stack's processes: each returns None when healthy, else raises
`Unhealthy` with a short reason (shown by `udagram status` and by `udagram up` when it gives up)."""

from __future__ import annotations

import httpx

from udagram.model_management import ManagementClient, ManagementError
from udagram.settings import Settings

TIMEOUT_S = 3.0
TIMEOUT = httpx.Timeout(TIMEOUT_S)


class Unhealthy(Exception):
    pass


def _get(url: str) -> httpx.Response:
    try:
        return httpx.get(url, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise Unhealthy(f"{url}: {type(exc).__name__} {exc}".strip()) from None


def http_ok(url: str) -> None:
    response = _get(url)
    if response.status_code != 200:
        raise Unhealthy(f"{url} answered {response.status_code}")


def s3(settings: Settings) -> None:
    http_ok(f"http://{settings.host}:{settings.s3_port}/healthz")


def sqs(settings: Settings) -> None:
    http_ok(f"http://{settings.host}:{settings.sqs_port}/moto-api/")


def dynamodb(settings: Settings) -> None:
    """dynalite answers a real ListTables call (signed as boto3 signs it)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from udagram.aws import client

    local = settings.model_copy(update={"dynamodb_endpoint_url": f"http://{settings.host}:{settings.dynamodb_port}"})
    try:
        client("dynamodb", local, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=3).list_tables(Limit=1)
    except (BotoCoreError, ClientError) as exc:
        raise Unhealthy(f"ListTables failed: {exc}") from None


def s3_events(settings: Settings) -> None:
    http_ok(f"http://{settings.host}:{settings.s3_events_port}/healthz")


def torchserve(settings: Settings) -> None:
    """Ready means a worker of the default model version is READY (not just /ping)."""
    try:
        default = ManagementClient.from_settings(settings, timeout=TIMEOUT_S).default()
    except ManagementError as exc:
        raise Unhealthy(str(exc)) from None
    if default is None:
        raise Unhealthy(f"model {settings.model_name!r} not registered yet at {settings.torchserve_management_url}")
    if not default.ready_workers:
        statuses = ", ".join(default.worker_statuses) or "none"
        raise Unhealthy(f"model {settings.model_name!r} has no READY worker yet (workers: {statuses})")


def api(settings: Settings, metrics_port: int | None = None) -> None:
    """The API port answers (any API process may), and this process's own metrics port: it opens
    only once the process holds its share of the API port (graphql_api/cli.py)."""
    http_ok(f"http://{settings.host}:{settings.api_port}/healthz")
    http_ok(f"http://{settings.api_metrics_host}:{metrics_port or settings.api_metrics_port}/metrics")


def worker(settings: Settings, metrics_port: int | None = None) -> None:
    http_ok(f"http://{settings.host}:{metrics_port or settings.worker_metrics_port}/metrics")
