"""Shared fixtures. Server fixtures live in tests/fixtures/ (one module per server) and are
registered here so every test directory can use them."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.ports",
    "tests.fixtures.torchserve",
    "tests.fixtures.aws",
    "tests.fixtures.stack",
]
