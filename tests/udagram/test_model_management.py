"""The one TorchServe management client, as the health check and `udagram reprocess` use it, when
nothing listens (a real TorchServe: tests/handlers/test_versions.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.ports import free_port
from udagram.model_management import ManagementClient, ManagementError
from udagram.settings import Settings
from udagram.stack import health
from workers.reprocess import check_model_version


def test_a_server_that_is_down_is_not_ready_and_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = ManagementClient(url)
    assert not client.ready()
    for call in (client.default, client.versions, lambda: client.has_version("1.0")):
        with pytest.raises(ManagementError, match=f"TorchServe management API at {url} is not reachable"):
            call()
    settings = Settings(_env_file=None, data_dir=tmp_path, torchserve_management_url=url)
    with pytest.raises(health.Unhealthy, match="is not reachable"):
        health.torchserve(settings)
    problem = check_model_version(settings, "1.0")
    assert problem is not None and "is not reachable" in problem


def test_the_urls_default_from_host_and_ports(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, host="127.0.0.1", torchserve_management_port=1234)
    assert ManagementClient.from_settings(settings).base_url == "http://127.0.0.1:1234"
    explicit = Settings(_env_file=None, data_dir=tmp_path, torchserve_management_url="http://ts.example:81/")
    assert ManagementClient.from_settings(explicit).base_url == "http://ts.example:81"
