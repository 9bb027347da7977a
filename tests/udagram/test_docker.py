"""docker/: static checks of the Dockerfiles and compose file.

What can be checked without building: compose parses and is consistent (every build points at
an existing Dockerfile with its own .dockerignore, every environment variable and every
`${VARIABLE}` is one the settings read, with the settings' default, and moving the ports moves
every command and endpoint; every command and health check names something that exists), and
every COPY source exists and is let through by the Dockerfile's .dockerignore. The images are
built and run by `make images` / `make compose-smoke` (docs/containers.md); what each image
installs is checked in test_image_dependencies.py.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.udagram_cli.commands import cli_has
from udagram.settings import Settings
from udagram.stack import health

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
RAW_COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
BIN = Path(sys.executable).parent
VARIABLE = re.compile(r"\$\{(\w+)(:-([^}]*))?\}")


def interpolated(value: Any, env: dict[str, str], names: set[str] | None = None) -> Any:
    """`value` with compose's ${NAME:-default} resolved from `env` (else the default)."""
    if isinstance(value, str):
        def resolve(match: re.Match) -> str:
            name, _, default = match.groups()
            assert default is not None, f"${{{name}}} has no default"
            if names is not None:
                names.add(name)
            return env.get(name, default)
        return VARIABLE.sub(resolve, value)
    if isinstance(value, dict):
        return {key: interpolated(item, env, names) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolated(item, env, names) for item in value]
    return value


COMPOSE = interpolated(RAW_COMPOSE, {})


def settings_env_names() -> set[str]:
    names = set()
    for name, info in Settings.model_fields.items():
        names.add(f"UDAGRAM_{name.upper()}")
        alias = info.validation_alias
        if alias is not None:
            names |= {c for c in getattr(alias, "choices", [alias]) if isinstance(c, str)}
    return names


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def exec_form(text: str) -> list[str]:
    return yaml.safe_load(text)  # JSON arrays are YAML


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics (last matching pattern wins, ! re-includes)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern == "**" or fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*") \
                or path.startswith(pattern + "/"):
            result = not negate
    return result


def check_command(command: list[str]) -> None:
    """The command exists in the project's images: a udagram subcommand, a module, a script."""
    if command[0] == "udagram":
        assert cli_has(*command[1:]), f"no `{shlex.join(command)}` command"
    elif command[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(command[2]) is not None, f"no module {command[2]}"
    elif command[:2] == ["python", "-c"]:
        compile(command[2], "<healthcheck>", "exec")
        for name in re.findall(r"health\.(\w+)\(", command[2]):
            assert callable(getattr(health, name, None)), f"no health check {name}"
    elif command[0] == "node":
        assert command[1] == "-e" or (REPO / "tools" / "node" / command[1]).exists(), command
    else:
        assert (BIN / command[0]).exists() or shutil.which(command[0]), f"no executable {command[0]}"


def test_every_service_builds_from_an_existing_dockerfile_or_shares_an_image() -> None:
    services = COMPOSE["services"]
    assert {"s3", "s3-events", "sqs", "dynamodb", "model-server", "api", "worker"} <= set(services)
    built = {}
    for name, service in services.items():
        build = service.get("build")
        assert build, f"{name} has no build"
        dockerfile = (DOCKER / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert (REPO / build["context"].replace("..", ".")).resolve() == REPO
        assert Path(f"{dockerfile}.dockerignore").is_file(), f"{dockerfile} has no .dockerignore"
        built.setdefault(service["image"], set()).add(dockerfile)
    assert all(len(files) == 1 for files in built.values()), built  # one Dockerfile per image tag
    assert {p.name for files in built.values() for p in files} == {p.name for p in DOCKERFILES}


def test_every_environment_variable_is_read_by_the_settings() -> None:
    known = settings_env_names()
    for name, service in COMPOSE["services"].items():
        unknown = set(service.get("environment") or {}) - known
        assert not unknown, f"{name}: {unknown} are not settings"
        # Endpoints follow the ports (local mode); the stand-ins' credentials are no constants here.
        assert not {n for n in service.get("environment") or {} if n.startswith("AWS_") and n != "AWS_REGION"}
    env = COMPOSE["services"]["api"]["environment"]
    settings = Settings(**{n.removeprefix("UDAGRAM_").lower(): v for n, v in env.items() if n.startswith("UDAGRAM_")})
    assert settings.mode == "local" and settings.host == "127.0.0.1"


def test_compose_variables_are_settings_with_their_defaults() -> None:
    names: set[str] = set()
    interpolated(RAW_COMPOSE, {}, names)
    assert names and names <= settings_env_names(), names - settings_env_names()
    defaults = Settings()
    environment = RAW_COMPOSE["x-environment"]
    for match in VARIABLE.finditer(yaml.safe_dump(RAW_COMPOSE)):
        name, _, default = match.groups()
        assert environment[name] == f"${{{name}:-{default}}}", f"{name} is passed on under its own name"
        assert default == str(getattr(defaults, name.removeprefix("UDAGRAM_").lower())), name


def test_every_port_setting_is_a_compose_variable() -> None:
    """So an instance on other ports (make compose-smoke picks free ones) moves every listener."""
    ports = {f"UDAGRAM_{name.upper()}" for name in Settings.model_fields
             if name.endswith("_port") or name == "seaweedfs_port_base"}
    assert ports - set(RAW_COMPOSE["x-environment"]) == set()


def test_moving_the_ports_moves_every_listener_and_endpoint() -> None:
    moved = {name: str(20000 + i * 20) for i, name in enumerate(sorted(
        m.group(1) for m in VARIABLE.finditer(yaml.safe_dump(RAW_COMPOSE))))}
    services = interpolated(RAW_COMPOSE, moved)["services"]
    env = services["api"]["environment"]
    settings = Settings(**{n.removeprefix("UDAGRAM_").lower(): v for n, v in env.items() if n.startswith("UDAGRAM_")})

    def shared(environment: dict[str, str]) -> dict[str, str]:  # all but the S3 identity it reads
        return {n: v for n, v in environment.items() if n != "UDAGRAM_LOCAL_IDENTITY"}

    assert all(shared(service.get("environment", env)) == shared(env) for service in services.values())
    identities = {name: s["environment"].get("UDAGRAM_LOCAL_IDENTITY") for name, s in services.items()
                  if "environment" in s}
    assert (identities["api"], identities["worker"], identities["resources"]) == ("api", "worker", "admin")
    assert {identities[name] for name in ("sqs", "s3", "s3-events", "model-server")} == {"none"}
    assert settings.s3_endpoint_url == f"http://127.0.0.1:{moved['UDAGRAM_S3_PORT']}"
    assert settings.sqs_endpoint_url == f"http://127.0.0.1:{moved['UDAGRAM_SQS_PORT']}"
    assert settings.dynamodb_endpoint_url == f"http://127.0.0.1:{moved['UDAGRAM_DYNAMODB_PORT']}"
    assert services["sqs"]["command"][-2:] == ["-p", moved["UDAGRAM_SQS_PORT"]]
    dynamodb = services["dynamodb"]
    assert dynamodb["command"][dynamodb["command"].index("--port") + 1] == moved["UDAGRAM_DYNAMODB_PORT"]
    assert f"connect({moved['UDAGRAM_DYNAMODB_PORT']}, '127.0.0.1')" in dynamodb["healthcheck"]["test"][-1]


def test_every_command_and_health_check_exists() -> None:
    for name, service in COMPOSE["services"].items():
        if "command" in service:
            dockerfile = DOCKER / service["build"]["dockerfile"].split("/")[-1]
            if any(keyword == "ENTRYPOINT" for keyword, _ in instructions(dockerfile)):
                assert service["command"][:2] == ["--host", "127.0.0.1"], name  # arguments of dynalite's
            else:
                check_command(service["command"])
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test[0] == "CMD"
            check_command(test[1:])
    for dockerfile in DOCKERFILES:
        for keyword, rest in instructions(dockerfile):
            if keyword == "CMD" and rest.startswith("["):
                command = exec_form(rest)
                if dockerfile.name == "dynalite.Dockerfile":
                    assert command[:4] == ["--host", "127.0.0.1", "--port", "4567"]
                else:
                    check_command(command)
            if keyword == "HEALTHCHECK":
                check_command(exec_form(rest[rest.index("CMD") + 3:].strip()))


def test_services_that_need_ordering_wait_for_health() -> None:
    services = COMPOSE["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services
            if condition["condition"] == "service_healthy":
                dep = services[dependency]
                has_check = "healthcheck" in dep or any(
                    k == "HEALTHCHECK" for k, _ in instructions(DOCKER / dep["build"]["dockerfile"].split("/")[-1]))
                assert has_check, f"{name} waits for {dependency}'s health, which has no check"
    assert "s3-events" in services["s3"]["depends_on"]  # the bridge listens before SeaweedFS starts


def test_no_service_depends_on_the_one_shot_resources_service() -> None:
    """podman 4.3 refuses to start a container that requires an exited one ("generating
    dependency graph ... not found in input list"), which `resources` is once it has done its
    work: the API and the worker wait for the resources themselves instead."""
    services = COMPOSE["services"]
    assert services["resources"]["restart"] == "on-failure"  # runs once, then exits
    dependents = [name for name, service in services.items() if "resources" in (service.get("depends_on") or {})]
    assert dependents == []


def test_everything_on_loopback() -> None:
    for name, service in COMPOSE["services"].items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service, name
    assert COMPOSE["services"]["sqs"]["command"][1:3] == ["-H", "127.0.0.1"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_build(dockerfile: Path) -> None:
    patterns = [line.strip() for line in Path(f"{dockerfile}.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copies = [rest for keyword, rest in instructions(dockerfile) if keyword == "COPY"]
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for source in parts[:-1]:
            path = REPO / source
            assert path.exists(), f"{dockerfile.name}: COPY source {source} missing"
            assert not ignored(source.rstrip("/"), patterns), f"{dockerfile.name}: {source} is in .dockerignore"
    assert instructions(dockerfile)[0][0] == "FROM"


INSTALLS_THE_PROJECT = [d for d in DOCKERFILES if ("RUN", "pip install --no-deps .") in instructions(d)]


@pytest.mark.parametrize("dockerfile", INSTALLS_THE_PROJECT, ids=lambda p: p.name)
def test_images_installing_the_project_copy_every_package(dockerfile: Path) -> None:
    """`pip install .` takes what pyproject.toml's package patterns match: each must be in the image
    (the `udagram` console script lives in udagram_cli/)."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")
                if any(fnmatch.fnmatch(p.parent.name, pattern) for pattern in patterns)}
    assert {"udagram", "udagram_cli", "graphql_api", "workers", "handlers"} <= packages
    copied = {shlex.split(rest)[0].rstrip("/") for keyword, rest in instructions(dockerfile) if keyword == "COPY"}
    assert packages <= copied, f"{dockerfile.name} does not copy {sorted(packages - copied)}"
