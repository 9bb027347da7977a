"""Build and run the container images with podman, offline: `make images`, `make compose-smoke`.

No Docker engine and no image registry are reachable here (docs/containers.md):
- `base`: Docker Hub's python:3.11-slim and node:20-slim can't be pulled, so faithful stand-ins
  are built once (only if missing): Debian bookworm from debootstrap, imported as
  debian:bookworm-slim, then docker/base/*.Containerfile on top. The Dockerfiles stay standard.
- `build`: every image docker/compose.yaml names, from its Dockerfile and .dockerignore, with
  host networking and this machine's pip and npm configuration (indexes, local wheel folders,
  CA bundle) visible to the build only (`build_home`), so torch comes from the local disk and
  nothing of the machine stays in the images. Prints build times and sizes.
`make compose-smoke` then runs docker/compose.yaml with podman-compose: tests/e2e/test_compose.py.
podman's quirks on this machine (runc, explicit ulimits) are in docker/podman/containers.conf.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import typer
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Fully qualified as Docker resolves the Dockerfiles' short names, so FROM finds them locally.
DEBIAN_BASE = "docker.io/library/debian:bookworm-slim"
SLIM_DPKG_RULES = [("exclude", "doc/*"), ("include", "doc/*/copyright"), ("exclude", "man/*"),
                   ("exclude", "groff/*"), ("exclude", "info/*"), ("exclude", "lintian/*"),
                   ("exclude", "locale/*"), ("include", "locale/locale.alias")]
BASES = {  # image -> its stand-in's Containerfile
    "docker.io/library/python:3.11-slim": DOCKER / "base" / "python.Containerfile",
    "docker.io/library/node:20-slim": DOCKER / "base" / "node.Containerfile",
}
BUILD_HOME = Path("/root")  # root's home in the images' RUN steps

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(DOCKER / "podman" / "containers.conf")}


def podman(*args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=podman_env(), check=check, text=True,
                          stdout=subprocess.PIPE if capture else None)


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def say(message: str) -> None:
    print(f"[containers] {message}", file=sys.stderr, flush=True)


# --- base images ---------------------------------------------------------------------------------


def slim_like_docker_hub(rootfs: Path) -> None:
    """What Docker Hub's debian:bookworm-slim does to a debootstrap root: updates and security
    updates in the sources, no package lists or caches (now and after every apt-get), no
    documentation, manual pages or translations."""
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {DEBIAN_MIRROR}\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    clean = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(
        f'DPkg::Post-Invoke {{ "{clean}"; }};\nAPT::Update::Post-Invoke {{ "{clean}"; }};\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\nAcquire::Languages "none";\n')
    for cache in ("var/lib/apt/lists", "var/cache/apt/archives", "var/cache/apt"):
        for path in (rootfs / cache).glob("*"):
            if path.is_file():
                path.unlink()
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker-slim").write_text(
        "".join(f"path-{rule} /usr/share/{path}\n" for rule, path in SLIM_DPKG_RULES))
    for pattern in ("doc/*/*", "man/*", "groff/*", "info/*", "lintian/*", "locale/*"):
        for path in (rootfs / "usr/share").glob(pattern):
            if path.name in ("copyright", "locale.alias"):
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


@contextmanager
def scratch_root() -> Iterator[Path]:
    """A folder for a root file system, removed afterwards: debootstrap mounts /proc inside while
    it works and leaves it mounted when interrupted, so unmount first and never delete through a
    mount."""
    tmp = Path(tempfile.mkdtemp(prefix="udagram-debootstrap-", dir="/var/tmp"))
    try:
        yield tmp / "rootfs"
    finally:
        def mounted() -> list[str]:
            points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
            return [point for point in points if point.startswith(f"{tmp}/")]
        for point in reversed(mounted()):
            subprocess.run(["umount", "--lazy", point], check=False)
        if mounted():
            say(f"left {tmp} in place: {', '.join(mounted())} still mounted")
        else:
            shutil.rmtree(tmp)


def debian_base() -> None:
    """debootstrap's Debian bookworm (minbase) imported as debian:bookworm-slim."""
    with scratch_root() as rootfs:
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                       check=True, stdout=subprocess.DEVNULL)
        slim_like_docker_hub(rootfs)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "--change", 'CMD ["bash"]', "-", DEBIAN_BASE],
                       stdin=tar.stdout, env=podman_env(), check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise SystemExit("tar of the debootstrap root failed")


def stage_node(context: Path) -> None:
    """This machine's Node 20 and npm, laid out as node:20-slim has them under /usr/local."""
    node = Path(shutil.which("node") or "").resolve()
    version = subprocess.run([str(node), "--version"], capture_output=True, text=True).stdout.strip()
    if not version.startswith("v20."):
        raise SystemExit(f"node:20-slim needs Node 20 on this machine; found {node} {version or 'nothing'}")
    npm = node.parent.parent / "lib" / "node_modules" / "npm"
    bin_dir = context / "node" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(node, bin_dir / "node")
    shutil.copytree(npm, context / "node" / "lib" / "node_modules" / "npm", symlinks=True)
    (bin_dir / "npm").symlink_to("../lib/node_modules/npm/bin/npm-cli.js")
    (bin_dir / "npx").symlink_to("../lib/node_modules/npm/bin/npx-cli.js")


def ensure_bases(force: bool = False) -> None:
    missing = [name for name in BASES if force or not image_exists(name)]
    if not missing:
        return
    started = time.monotonic()
    if force or not image_exists(DEBIAN_BASE):
        say(f"debootstrap bookworm -> {DEBIAN_BASE}")
        debian_base()
    for name in missing:
        say(f"building the stand-in {name}")
        with tempfile.TemporaryDirectory(prefix="udagram-base-") as tmp:
            if "node" in name:
                stage_node(Path(tmp))
            podman("build", "--network=host", "--pull=never", "-f", str(BASES[name]), "-t", name, tmp)
    say(f"base images ready in {time.monotonic() - started:.0f} s")


@app.command()
def base(force: bool = typer.Option(False, help="Rebuild the stand-ins even if they exist.")) -> None:
    """Build the stand-ins of python:3.11-slim and node:20-slim (only those missing)."""
    ensure_bases(force)


# --- application images --------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    tag: str
    dockerfile: Path

    @property
    def ignorefile(self) -> Path:
        return Path(f"{self.dockerfile}.dockerignore")


def compose_images() -> list[Image]:
    """Every image docker/compose.yaml builds, once each, in the file's order."""
    found: dict[str, Image] = {}
    for service in yaml.safe_load(COMPOSE_FILE.read_text())["services"].values():
        build = service["build"]
        found.setdefault(service["image"], Image(service["image"], (COMPOSE_FILE.parent / build["context"]
                                                                     / build["dockerfile"]).resolve()))
    return list(found.values())


def _host_path(value: str) -> Path | None:
    """A local file or folder a pip/npm setting names (a path or a file:// URL), if it exists."""
    path = Path(urlparse(value).path) if value.startswith("file://") else Path(value)
    return path if path.is_absolute() and path.exists() else None


def pip_settings() -> dict[str, str]:
    """This machine's effective pip settings: its config files, overridden by PIP_* variables."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=True, env={k: v for k, v in os.environ.items() if not k.startswith("PIP_")})
    found = {}
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.partition(".")
        if section in ("global", "install"):
            found[name] = value.strip().strip("'\"")
    for key, value in os.environ.items():
        if key.startswith("PIP_"):
            found[key.removeprefix("PIP_").lower().replace("_", "-")] = value
    return found


def build_home(home: Path) -> list[str]:
    """podman build arguments that show a build this machine's pip and npm settings, and nothing
    stays in the image: the RUN steps get `home` as root's home folder (/root exists in every
    base image, so no mount point is created in it), holding ~/.config/pip/pip.conf, ~/.npmrc and,
    mounted read-only below ~/host/, every local file or folder those settings name (wheel
    folders, local indexes, the constraints file, the CA bundle)."""
    mounts: dict[Path, Path] = {}

    def inside(value: str, whole_parent: bool = False) -> str:
        """`value` with every local path rewritten to where the build sees it."""
        words = []
        for word in value.split():
            host = _host_path(word)
            if host is None:
                words.append(word)
                continue
            # A local index (simple/<name>/index.html) links to its files relatively (../../files/).
            mounted = host.parent if whole_parent else host
            mounts[mounted] = Path("host") / mounted.relative_to("/")
            words.append(word.replace(str(host), str(BUILD_HOME / "host" / host.relative_to("/")), 1))
        return " ".join(words)

    pip_conf = home / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True)
    pip_conf.write_text("[global]\n" + "".join(f"{key} = {inside(value, whole_parent=key.endswith('index-url'))}\n"
                                               for key, value in sorted(pip_settings().items())))
    ca = os.environ.get("NODE_EXTRA_CA_CERTS") or os.environ.get("SSL_CERT_FILE")
    (home / ".npmrc").write_text(f"cafile={inside(ca)}\n" if ca and _host_path(ca) else "")
    args = [f"--volume={home}:{BUILD_HOME}"]
    for host, relative in mounts.items():
        # The mount point, made here in `home` rather than by the runtime in the image.
        (home / relative).parent.mkdir(parents=True, exist_ok=True)
        (home / relative).mkdir() if host.is_dir() else (home / relative).touch()
        args.append(f"--volume={host}:{BUILD_HOME / relative}:ro")
    return args


def torch_pins() -> list[str]:
    """The serving group's torch and torchvision requirements (pyproject.toml)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [r for r in project["optional-dependencies"]["serving"] if re.match(r"torch(vision)?\b(?!-)", r)]
    assert len(pins) == 2, pins
    return pins


def image_size(tag: str) -> int:
    out = podman("image", "inspect", "--format", "{{.Size}}", tag, capture=True).stdout
    return int(out.strip())


@app.command()
def build(
    only: list[str] = typer.Option([], "--only", help="Build only these images (tag or Dockerfile name)."),
    torch: str | None = typer.Option(
        None, help="pip arguments of the model server's torch step (its TORCH build argument). Default: the "
                   "serving group's torch pins from this machine's pip indexes (offline here: PyPI's CUDA build "
                   "from the local wheels, as no CPU wheel of torchvision is on disk)."),
    no_cache: bool = typer.Option(False, help="Rebuild every layer."),
) -> None:
    """Build every image docker/compose.yaml uses; print build times and sizes."""
    ensure_bases()
    torch = torch if torch is not None else " ".join(torch_pins())
    images = [i for i in compose_images() if not only or i.tag in only or i.dockerfile.name in only]
    timings = []
    with tempfile.TemporaryDirectory(prefix="udagram-build-") as tmp:
        home_args = build_home(Path(tmp))
        for image in images:
            say(f"building {image.tag} from {image.dockerfile.relative_to(REPO)}")
            started = time.monotonic()
            torch_arg = ["--build-arg", f"TORCH={torch}"] if "ARG TORCH" in image.dockerfile.read_text() else []
            podman("build", "--format=docker", "--network=host", "--pull=never", *home_args, *torch_arg,
                   "--ignorefile", str(image.ignorefile),
                   "-f", str(image.dockerfile), "-t", image.tag, *(["--no-cache"] if no_cache else []), str(REPO))
            timings.append((image.tag, time.monotonic() - started, image_size(image.tag)))
    width = max(len(tag) for tag, _, _ in timings)
    print(f"{'image':<{width}}  {'build':>7}  {'size':>8}")
    for tag, seconds, size in timings:
        print(f"{tag:<{width}}  {seconds:>6.0f}s  {size / 1e6:>6.0f} MB")


if __name__ == "__main__":
    app()
