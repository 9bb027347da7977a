"""Each image installs only its role's dependency groups of pyproject.toml (docker/*.Dockerfile run
`docker/requirements.py GROUP`), so what runs in it must not need anything else: the API and
worker images have no torch.

Checked without building: the requirement closure of each image's groups (from the installed
distributions' metadata), and a fresh interpreter in which every installed distribution outside
that closure cannot be imported runs the image's `udagram` commands (`--help`) and imports its
packages. `make compose-smoke` runs the real images (docs/containers.md).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
_spec = importlib.util.spec_from_file_location("image_requirements", DOCKER / "requirements.py")
image_requirements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_requirements)

# What runs in each image: `udagram` commands (its CMD, compose commands, health checks) and the
# packages or modules behind them.
ROLES = {
    "api.Dockerfile": (["api", "token"], ["graphql_api", "udagram.stack.health"]),
    "worker.Dockerfile": (["worker", "reprocess"], ["workers", "udagram.stack.health"]),
    "stand-ins.Dockerfile": ([], ["udagram.stack.s3_events", "udagram.stack.seaweedfs", "udagram.stack.health",
                                  "moto.server"]),
    "model-server.Dockerfile": (["model serve", "model build"], ["handlers", "udagram.stack.health"]),
}
# In every image besides the requirements: the project itself and what the base image's pip brings.
ALWAYS = {"udagram-redux", "pip", "setuptools"}
TORCH = {"torch", "torchvision", "torchserve", "torch-model-archiver", "triton"}


def image_groups(dockerfile: str) -> list[str]:
    found = re.findall(r"python requirements\.py ([\w ]+?) >", (DOCKER / dockerfile).read_text())
    assert len(found) == 1, f"{dockerfile} installs its groups with docker/requirements.py once"
    return found[0].split()


def closure(requirements: list[str]) -> set[str]:
    """Every installed distribution the requirements pull in (with their extras), canonical names."""
    found: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(Requirement(r), frozenset([""])) for r in requirements]
    while pending:
        requirement, extras = pending.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not for this platform/Python
        found.add(name)
        pending += [(Requirement(r), frozenset(requirement.extras | {""})) for r in requires]
    return found


def absent_modules(installed: set[str]) -> set[str]:
    """Top-level modules of this venv that no distribution in `installed` provides."""
    return {module for module, dists in metadata.packages_distributions().items()
            if not {canonicalize_name(d) for d in dists} & installed}


def image_closure(dockerfile: str) -> set[str]:
    pyproject = REPO / "pyproject.toml"
    return closure(image_requirements.requirements(pyproject, image_groups(dockerfile))) | ALWAYS


def test_every_python_image_installs_its_groups() -> None:
    for dockerfile in ROLES:
        assert image_groups(dockerfile), dockerfile
    assert set(ROLES) == {p.name for p in DOCKER.glob("*.Dockerfile")} - {"dynalite.Dockerfile"}


@pytest.mark.parametrize("dockerfile", ["api.Dockerfile", "worker.Dockerfile", "stand-ins.Dockerfile"])
def test_only_the_model_server_image_installs_torch(dockerfile: str) -> None:
    assert not image_closure(dockerfile) & TORCH
    assert {"torch", "torchserve"} <= image_closure("model-server.Dockerfile")


def test_requirements_script_adds_groups_to_the_shared_dependencies() -> None:
    pyproject = REPO / "pyproject.toml"
    shared = image_requirements.requirements(pyproject, [])
    api = image_requirements.requirements(pyproject, ["api"])
    assert shared and api[:len(shared)] == shared and len(api) > len(shared)
    with pytest.raises(SystemExit, match="no dependency group nonsense"):
        image_requirements.requirements(pyproject, ["nonsense"])


CHECK = r"""
import importlib, importlib.abc, json, pkgutil, sys

absent = set(json.loads(sys.argv[1]))
commands, modules = json.loads(sys.argv[2])


class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed in this image)", name=name)
        return None


sys.meta_path.insert(0, NotInTheImage())
from typer.testing import CliRunner
from udagram_cli import app

for command in commands:
    result = CliRunner().invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, (command, result.output, repr(result.exception))
for name in modules:
    module = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("dockerfile", sorted(ROLES))
def test_what_runs_in_the_image_imports_only_what_it_installs(dockerfile: str) -> None:
    commands, modules = ROLES[dockerfile]
    absent = absent_modules(image_closure(dockerfile))
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps(sorted(absent)), json.dumps([commands, modules])],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {name.partition(".")[0] for name in json.loads(result.stdout)}
    assert imported & {"udagram", *(m.partition(".")[0] for m in modules)}


@pytest.mark.parametrize("command", ["api", "worker"])
def test_api_and_worker_help_import_no_torch(command: str) -> None:
    """Fresh interpreter, nothing blocked: `udagram api|worker --help` loads no torch at all."""
    code = ("import sys; from typer.testing import CliRunner; from udagram_cli import app; "
            f"r = CliRunner().invoke(app, ['{command}', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.partition('.')[0] in "
            "{'torch', 'torchvision', 'ts', 'model_archiver', 'PIL', 'numpy'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
