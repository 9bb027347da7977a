"""`udagram/` is the ground every role stands on: it must not import a role package (the model
server, the API, the worker) nor the command line that assembles them (udagram_cli), or the roles
could not be installed and reasoned about one at a time, and import cycles creep in."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ABOVE_THE_GROUND = {"handlers", "graphql_api", "workers", "udagram_cli"}


def imported_packages(source: str) -> set[str]:
    """The top-level packages `source` imports, wherever the import statement is (functions too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def test_the_check_sees_imports_anywhere() -> None:
    source = ("import os, workers.logs\nfrom graphql_api.cli import register\n"
              "def late():\n    from handlers import cli\n    import udagram_cli\nfrom . import sibling\n")
    assert imported_packages(source) == {"os", "workers", "graphql_api", "handlers", "udagram_cli"}


def test_the_ground_imports_no_role() -> None:
    modules = sorted((REPO / "udagram").rglob("*.py"))
    assert {"settings.py", "data.py", "programs.py", "s3_events.py"} <= {path.name for path in modules}
    upward = {str(path.relative_to(REPO)): sorted(imported_packages(path.read_text()) & ABOVE_THE_GROUND)
              for path in modules}
    assert {path: names for path, names in upward.items() if names} == {}
