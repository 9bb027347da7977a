"""Print the pip requirements of an image: pyproject.toml's shared dependencies plus its groups.

The Dockerfiles install these before copying the code, so a code change does not re-install
them, then the project itself without dependencies:
    python requirements.py api > requirements.txt && pip install -r requirements.txt
Standard library only: it runs in the bare base image.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, groups: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [group for group in groups if group not in optional]
    if unknown:
        raise SystemExit(f"no dependency group {', '.join(unknown)} in {pyproject} (has: {', '.join(optional)})")
    found = list(project["dependencies"])
    for group in groups:
        found += [requirement for requirement in optional[group] if requirement not in found]
    return found


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python requirements.py GROUP... (from pyproject.toml's optional-dependencies)")
    print("\n".join(requirements(Path("pyproject.toml"), sys.argv[1:])))
