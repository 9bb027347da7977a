"""Container images from the repository's own Dockerfiles (docker/*.Dockerfile).

Synthesis only stages each image's build context into cdk.out (no Docker needed); `cdk deploy`
builds and pushes the images. Each build context holds just what the image's
`docker/<name>.Dockerfile.dockerignore` lets through, so staging copies a few hundred source
files, not the repository's .venv or .data. The health check is read from the Dockerfile's
HEALTHCHECK, because ECS ignores the image's own and the Dockerfile is its one definition.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from aws_cdk import Duration, IgnoreMode, aws_ecr_assets as ecr_assets, aws_ecs as ecs

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"


def dockerfile(name: str) -> Path:
    return DOCKER_DIR / f"{name}.Dockerfile"


def _build_context_patterns(name: str) -> list[str]:
    ignore = dockerfile(name).with_name(f"{name}.Dockerfile.dockerignore")
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    # The Dockerfile and its ignore file travel with the context (docker build -f reads them from it).
    relative = dockerfile(name).relative_to(REPO_ROOT).as_posix()
    return patterns + [f"!{relative}", f"!{relative}.dockerignore"]


def image(name: str) -> ecs.ContainerImage:
    """The image built from docker/<name>.Dockerfile with the repository root as context."""
    return ecs.ContainerImage.from_asset(
        str(REPO_ROOT),
        file=dockerfile(name).relative_to(REPO_ROOT).as_posix(),
        exclude=_build_context_patterns(name),
        ignore_mode=IgnoreMode.DOCKER,
        platform=ecr_assets.Platform.LINUX_AMD64,
    )


_HEALTHCHECK = re.compile(r"^HEALTHCHECK((?:\s+--[a-z-]+=\S+)*)\s+CMD\s+(\[.*\])\s*$", re.MULTILINE)


def health_check(name: str) -> ecs.HealthCheck:
    """The Dockerfile's `HEALTHCHECK [--interval=..] [--timeout=..] [--start-period=..] CMD [...]`."""
    text = dockerfile(name).read_text().replace("\\\n", " ")
    match = _HEALTHCHECK.search(text)
    if not match:
        raise ValueError(f"{dockerfile(name)} has no exec-form HEALTHCHECK")
    options = dict(re.findall(r"--([a-z-]+)=(\d+)s", match.group(1)))
    seconds = {key: Duration.seconds(int(value)) for key, value in options.items()}
    return ecs.HealthCheck(
        command=["CMD", *json.loads(match.group(2))],
        interval=seconds.get("interval"),
        timeout=seconds.get("timeout"),
        start_period=seconds.get("start-period"),
        retries=3,
    )
