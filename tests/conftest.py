"""Shared fixtures. Server fixtures live in tests/fixtures/ (one module per server) and are
registered here so every test directory can use them.

The `aws`, `torchserve` and `browser` markers follow from the fixtures a test uses, directly or
through other fixtures (`SERVER_FIXTURES`), so they cannot lie: `-m "not aws and not torchserve
and not browser"` is the unit run, which starts no server. A test that starts a server without
one of these fixtures (a subprocess of its own) still carries its marker by hand."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.ports",
    "tests.fixtures.torchserve",
    "tests.fixtures.aws",
    "tests.fixtures.stack",
]

SERVER_FIXTURES = {
    # moto server, dynalite, SeaweedFS; the whole local stack runs all of them and TorchServe
    "aws": {"moto_server", "dynalite", "seaweedfs", "local_stack"},
    # TorchServe, and the archives built for it (minutes of torch the first time)
    "torchserve": {"torchserve", "torchserve_factory", "torchserve_model_store", "classifier_archive",
                   "torchscript_archive", "local_stack"},
    # headless Chromium, and pytest-iam's Canaille (an OpenID provider the browser signs in at)
    "browser": {"browser", "page", "iam_server"},
}


def server_markers(fixture_names: set[str]) -> set[str]:
    """The markers a test using `fixture_names` (the whole closure) must carry."""
    return {marker for marker, fixtures in SERVER_FIXTURES.items() if fixture_names & fixtures}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        present = {mark.name for mark in item.iter_markers()}
        for marker in sorted(server_markers(set(getattr(item, "fixturenames", ()))) - present):
            item.add_marker(marker)
    # `containers` needs the built images (`make compose-smoke`): only an -m naming it selects them.
    # (Not an addopts `-m 'not containers'`: any -m on the command line would replace it.)
    if "containers" not in (config.option.markexpr or ""):
        deselected = [item for item in items if item.get_closest_marker("containers")]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker("containers")]
