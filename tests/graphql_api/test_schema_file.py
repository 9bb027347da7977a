"""schema.graphql at the repository's root is the live schema (clients and reviewers read it)."""

from __future__ import annotations

import difflib
from pathlib import Path

from graphql_api.schema import schema_sdl

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"


def test_committed_schema_file_is_the_live_schema():
    committed = SCHEMA_FILE.read_text() if SCHEMA_FILE.exists() else ""
    live = schema_sdl()
    diff = "".join(difflib.unified_diff(committed.splitlines(True), live.splitlines(True),
                                        "schema.graphql (committed)", "live schema"))
    assert committed == live, (
        "schema.graphql differs from the live schema: regenerate it with "
        "`.venv/bin/udagram schema > schema.graphql` and commit it.\n" + diff)


def test_schema_command_prints_the_same_sdl():
    from typer.testing import CliRunner

    from udagram_cli import app

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0 and result.output == schema_sdl()
    assert "searchImages(label: String!, minProbability: Float = 0" in result.output
