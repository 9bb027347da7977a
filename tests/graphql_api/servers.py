"""`udagram api` subprocesses on the moto server, for tests that need real uvicorn (websockets)
or several API processes at once (live updates must not depend on in-process fan-out)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.aws import udagram_api
from tests.fixtures.ports import free_port
from udagram.settings import Settings

_AWS_NAMES = {"s3_endpoint_url": "AWS_ENDPOINT_URL_S3", "sqs_endpoint_url": "AWS_ENDPOINT_URL_SQS",
              "dynamodb_endpoint_url": "AWS_ENDPOINT_URL_DYNAMODB", "aws_region": "AWS_REGION",
              "aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY"}


@dataclass
class ApiProcess:
    url: str  # where this process listens
    settings: Settings  # what it runs with (public_url may be another process's: one site, several processes)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphql"


def api_env(settings: Settings, port: int, public_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a `udagram api` on `settings`' servers and resources, on `port`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UDAGRAM_", "AWS_"))}
    for name, value in settings.model_dump().items():
        if name in _AWS_NAMES:
            env[_AWS_NAMES[name]] = str(value)
        elif name.endswith(("_table", "_bucket", "_queue_name")) or name in ("queue_name", "data_dir"):
            env[f"UDAGRAM_{name.upper()}"] = str(value)
    env.update(UDAGRAM_API_PORT=str(port), UDAGRAM_API_METRICS_PORT=str(free_port()), UDAGRAM_PUBLIC_URL=public_url,
               UDAGRAM_ALLOWED_HOSTS=json.dumps(settings.allowed_hosts), UDAGRAM_LIVE_POLL_SECONDS="0.3",
               UDAGRAM_BULK_FEED_INTERVAL_SECONDS="0.3")
    env.update(overrides)
    return env


@contextmanager
def api_process(settings: Settings, log: Path, public_url: str | None = None, **overrides: str) -> Iterator[ApiProcess]:
    """`udagram api` on a free port (its public_url: `public_url`, else its own), healthy when
    yielded, stopped (its process group) at the end."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    public_url = public_url or url
    env = api_env(settings, port, public_url, **overrides)
    with udagram_api(env, log):
        yield ApiProcess(url=url, settings=settings.model_copy(update={
            "api_port": port, "public_url": public_url, "auth_issuer": public_url + "/"}))
