"""Browser-test helpers: where screenshots go, and a summary line per screenshot at the end of
the run (so their paths show in the output even when the tests pass)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
_SCREENSHOTS = pytest.StashKey[list]()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable:
    """`screenshot(page, name)` writes test-artifacts/<name>.png (full page) and returns its path."""

    def take(page, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        request.config.stash.setdefault(_SCREENSHOTS, []).append((request.node.nodeid, path))
        request.node.user_properties.append(("screenshot", str(path)))
        return path

    return take


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture can tell that its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    shots = config.stash.get(_SCREENSHOTS, [])
    if shots:
        terminalreporter.section("browser screenshots")
        for nodeid, path in shots:
            terminalreporter.write_line(f"{path}  ({nodeid.split('::')[-1]})")


@pytest.fixture(scope="session")
def iam_configuration(iam_configuration: dict) -> dict:
    """pytest-iam's Canaille (the independent OpenID provider of the production-path tests), its key
    marked RS256: the API accepts RS256 tokens only, and Canaille signs with RS512 when its RSA key
    names no algorithm."""
    for key in iam_configuration["CANAILLE_OIDC"]["ACTIVE_JWKS"]:
        key["alg"] = "RS256"
    return iam_configuration
