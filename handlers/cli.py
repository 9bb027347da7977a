"""`udagram model ...`: build archives, serve them, and manage versions on a running TorchServe."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from udagram.model_management import ManagementClient

model_app = typer.Typer(no_args_is_help=True, add_completion=False)


def _settings():  # noqa: ANN202 - imported lazily: `udagram token` must not pay for this module
    from udagram.settings import get_settings

    return get_settings()


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _client():  # noqa: ANN202
    from udagram.model_management import ManagementClient

    return ManagementClient.from_settings(_settings())


# --- build and serve ---------------------------------------------------------------------------


@model_app.command()
def build(
    arch: str = typer.Option("efficientnet_lite2",
                             help="efficientnet_lite2 (packaged ImageNet weights) or efficientnet_b2"),
    weights: Path | None = typer.Option(None, help="efficientnet_b2 state_dict file (.pth)"),
    labels: Path | None = typer.Option(None, help="class names: JSON list/map or one per line (default: ImageNet)"),
    version: str = typer.Option("1.0", help="archive version (file classifier-<version>.mar)"),
    batch_size: int = typer.Option(2, help="TorchServe dynamic batch size"),
    max_batch_delay: int = typer.Option(5, help="ms TorchServe waits to fill a batch"),
    workers: int = typer.Option(0, help="model workers (0: one per core)"),
    threads: int = typer.Option(1, help="intra-op threads per worker (0: all cores)"),
    runtime: str | None = typer.Option(
        None, help="onnx or torchscript (default: onnx, the faster, if it passes verification, else torchscript)"
    ),
    store: Path | None = typer.Option(None, help="model store directory (default: settings.model_store)"),
    force: bool = typer.Option(False, help="rebuild even if the archive exists"),
) -> None:
    """Write a classifier .mar archive into the model store (kept if it already exists)."""
    from handlers.archive import ArchiveError, Batching, archive_info, archive_path, build_archive

    model_store = store or _settings().model_store
    existed = archive_path(model_store, version).exists()
    try:
        path = build_archive(
            model_store,
            arch=arch,  # type: ignore[arg-type]
            version=version,
            weights=weights,
            labels=labels,
            batching=Batching(batch_size=batch_size, max_batch_delay_ms=max_batch_delay,
                              **({"workers": workers} if workers > 0 else {})),
            threads=threads,
            force=force,
            runtime=runtime,  # type: ignore[arg-type]
        )
    except ArchiveError as exc:
        _fail(str(exc))
        return
    meta = archive_info(path)["meta"]
    state = "kept (exists; --force rebuilds)" if existed and not force else "built"
    runtime_used = meta.get("runtime", "torchscript")
    typer.echo(f"{path} {state}: {meta['arch']}, {meta['num_classes']} classes, version {version}, {runtime_used}")
    if not (existed and not force):
        _echo_verification(meta)


def _echo_verification(meta: dict) -> None:
    """What the build checked (model_meta.json's `verification`), as `build` and `train` print it."""
    checked = meta.get("verification") or {}
    if checked:
        typer.echo(f"verified on {checked['photos']} reference photos: same top 5 as the eager model, "
                   f"max |Δp| {checked['max_abs_dp']:.1e}")
        for rejected, why in checked.get("rejected", {}).items():
            typer.echo(f"not {rejected}: {why}")


@model_app.command()
def serve() -> None:
    """Run TorchServe in the foreground with the settings' ports (builds the default archive first).

    Serves what the model registry recorded (the versions, their workers, the default; see
    handlers/registry.py), else the archive of UDAGRAM_MODEL_DEFAULT_VERSION. Stops TorchServe on
    SIGTERM/SIGINT and exits when TorchServe exits (for supervisord)."""
    from handlers import registry
    from handlers.archive import DEFAULT_VERSION, archive_path, ensure_default_archive
    from handlers.server import Endpoints, TorchServeProcess

    settings = _settings()
    try:
        recorded = registry.load(settings.model_registry_path)
    except registry.RegistryError as exc:
        typer.echo(f"warning: {exc}; serving version {settings.model_default_version} only", err=True)
        recorded = None

    def archive_for(version: str) -> Path:
        if version == DEFAULT_VERSION:
            return ensure_default_archive(settings)
        archive = archive_path(settings.model_store, version)
        if not archive.exists():
            _fail(f"{archive} not found: build it (udagram model build --version {version} ...) or unset "
                  "UDAGRAM_MODEL_DEFAULT_VERSION")
        return archive

    if settings.model_default_version == DEFAULT_VERSION:
        ensure_default_archive(settings)  # the packaged default, rebuilt when made by an older handler
    plan = registry.plan_start(
        recorded,
        settings.model_store,
        settings.model_default_version,
        "model_default_version" in settings.model_fields_set,  # set in the environment: it wins
        archive_for,
    )
    log_dir = Path(os.environ.get("LOG_LOCATION") or settings.data_dir / "logs" / "torchserve")
    server = TorchServeProcess(
        Endpoints.from_settings(settings),
        settings.model_store,
        settings.data_dir / "torchserve",
        {settings.model_name: plan.default_archive},
        model_name=settings.model_name,
        log_dir=log_dir,
        config_template=settings.torchserve_config,
    )

    # The handler only raises a flag: stopping from inside it would race the main thread's wait()
    # on the same child (Popen's wait lock), so the loop below does the stopping.
    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())
    process = server.launch()
    typer.echo(
        f"TorchServe starting: {settings.model_name} {plan.default} from {plan.default_archive}; inference "
        f"{server.inference_url}, management {server.management_url}, metrics {server.metrics_url}; logs in {log_dir}"
    )
    # The other recorded versions are registered once the default serves, beside this loop.
    threading.Thread(
        target=_restore_when_ready, args=(server, plan, settings, stop_requested), daemon=True
    ).start()
    while process.poll() is None and not stop_requested.wait(0.5):
        pass
    code = process.poll()
    server.stop()  # also when TorchServe exited by itself: Java may outlive the launcher
    if stop_requested.is_set():
        typer.echo("TorchServe stopped")
        return
    typer.echo(f"TorchServe exited on its own (code {code}); see {log_dir}", err=True)
    raise typer.Exit(code or 1)  # it is meant to run until stopped


def _restore_when_ready(server, plan, settings, stop_requested: threading.Event) -> None:  # noqa: ANN001
    import math

    from handlers import registry
    from handlers.server import is_ready
    from udagram.model_management import ManagementClient, ManagementError
    from udagram.waiting import poll_until

    def state() -> str:
        if stop_requested.is_set() or not server.is_running():
            return "stopped"
        return "ready" if is_ready(server.management_url, settings.model_name) else "starting"

    if poll_until(state, lambda found: found != "starting", math.inf, 0.5) != "ready":
        return
    client = ManagementClient(server.management_url, settings.model_name)
    try:
        registry.restore(client, plan, lambda line: typer.echo(line, err=line.startswith("warning")))
        serving = ", ".join(sorted(v.version for v in client.versions()))
    except ManagementError as exc:  # TorchServe went away meanwhile: the next start restores again
        typer.echo(f"warning: versions not restored: {exc}", err=True)
        return
    _remember(client)  # drops what could not be restored: the file says what is served
    typer.echo(f"serving versions {serving} (default {plan.default})")


def _remember(client) -> None:  # noqa: ANN001
    """Record what TorchServe serves after a change, so that it survives a restart."""
    from handlers import registry
    from udagram.model_management import ManagementError

    path = _settings().model_registry_path
    try:
        registry.record(path, client)
    except (ManagementError, OSError) as exc:
        typer.echo(f"warning: not recorded in {path}, so a TorchServe restart will not keep it: {exc}", err=True)


# --- versions on a running server --------------------------------------------------------------


@contextmanager
def _management_errors() -> Iterator[None]:
    """A refused or failed management call: its one-line message, exit 1."""
    from udagram.model_management import ManagementError

    try:
        yield
    except ManagementError as exc:
        _fail(str(exc))


@contextmanager
def _changing_versions() -> Iterator[ManagementClient]:
    """A client for calls that change what is served: failures as `_management_errors`, and what is
    served afterwards recorded (`_remember`) only when they all succeeded."""
    client = _client()
    with _management_errors():
        yield client
    _remember(client)


@model_app.command("list")
def list_versions() -> None:
    """Registered versions of the classifier: default, workers and their status, batching."""
    client = _client()
    with _management_errors():
        versions = client.versions()
    if not versions:
        _fail(f"no {client.model_name} model is registered at {client.base_url}")
    typer.echo(f"{'VERSION':<10} {'DEFAULT':<8} {'WORKERS':<8} {'STATUS':<22} {'BATCH':<10} ARCHIVE")
    for v in versions:
        statuses = ",".join(v.worker_statuses) or "none"
        typer.echo(
            f"{v.version:<10} {'*' if v.is_default else '':<8} {f'{v.ready_workers}/{v.max_workers}':<8} "
            f"{statuses:<22} {f'{v.batch_size}/{v.max_batch_delay_ms}ms':<10} {v.archive}"
        )


@model_app.command()
def register(
    archive: Path = typer.Argument(..., help=".mar file (copied into the model store if outside it)"),
    workers: int = typer.Option(1, help="workers to start for this version"),
) -> None:
    """Register an archive as a new version (not the default until set-default)."""
    from udagram.model_management import stage_archive

    with _changing_versions() as client:
        name = stage_archive(archive, _settings().model_store)
        version = client.register(name, workers)
    typer.echo(f"registered {name} as version {version.version} ({version.ready_workers} worker(s) READY)")


@model_app.command("set-default")
def set_default(version: str) -> None:
    """Route /predictions/classifier to VERSION (roll out or roll back)."""
    with _changing_versions() as client:
        client.set_default(version)
    typer.echo(f"default version is now {version}")


@model_app.command()
def scale(version: str, workers: int) -> None:
    """Run WORKERS workers for VERSION (0 parks it without unregistering)."""
    with _changing_versions() as client:
        client.scale(version, workers)
    typer.echo(f"version {version} now runs {workers} worker(s)")


@model_app.command()
def remove(version: str) -> None:
    """Unregister VERSION (refused for the default version)."""
    with _changing_versions() as client:
        client.remove(version)
    typer.echo(f"version {version} removed")


# --- judge, train, canary ------------------------------------------------------------------------


@model_app.command()
def evaluate(
    directory: Path = typer.Argument(..., help="a folder per label of photos: DIR/<label>/*.jpg"),
    versions: str | None = typer.Option(None, help="comma-separated, e.g. 1.0,2.0 (default: every registered one)"),
    report: Path | None = typer.Option(None, help="markdown report (default: <data_dir>/reports/evaluate-<time>.md)"),
) -> None:
    """Top-1/top-5 accuracy, confidence and latency of versions side by side, through TorchServe."""
    from datetime import datetime

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from handlers.datasets import DatasetError, label_folders
    from handlers.evaluate import (
        EvaluationError,
        InferenceClient,
        archive_labels,
        evaluate as run,
        markdown,
        rich_table,
    )

    settings = _settings()
    try:
        collection = label_folders(directory)
    except DatasetError as exc:
        _fail(str(exc))
        return
    client = _client()
    with _management_errors():
        registered = {v.version: v for v in client.versions()}
    if not registered:
        _fail(f"no {client.model_name} model is registered at {client.base_url}")
    chosen = [v.strip() for v in versions.split(",") if v.strip()] if versions else sorted(registered)
    unknown = [v for v in chosen if v not in registered]
    if unknown or not chosen:
        _fail(f"not registered: {', '.join(unknown) or '(no version given)'} "
              f"(registered: {', '.join(sorted(registered))})")
    class_names: dict[str, list[str] | None] = {}
    for version in chosen:
        archive = Path(settings.model_store) / registered[version].archive
        try:
            class_names[version] = archive_labels(archive)
        except (OSError, KeyError, ValueError) as exc:  # a server elsewhere: labels checked against answers only
            typer.echo(f"warning: class names of {version} unknown ({archive}: {exc})", err=True)
            class_names[version] = None
    photos = sum(len(paths) for paths in collection.values())
    inference = InferenceClient(settings.torchserve_inference_url, settings.model_name)
    console = Console()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True)) as progress:
            task = progress.add_task("predictions", total=photos * len(chosen))
            scores = run(inference, chosen, collection, class_names, lambda: progress.advance(task))
    except EvaluationError as exc:
        _fail(str(exc))
        return
    finally:
        inference.close()
    when = datetime.now(UTC)
    console.print(rich_table(scores, f"{photos} photos, {len(collection)} labels from {directory}"))
    target = report or settings.data_dir / "reports" / f"evaluate-{when:%Y%m%d-%H%M%S}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(markdown(scores, directory, settings.torchserve_inference_url, when), encoding="utf-8")
    typer.echo(f"report: {target}")


@model_app.command()
def train(
    directory: Path = typer.Argument(..., help="a folder per label of photos: DIR/<label>/*.jpg"),
    version: str = typer.Option(..., help="archive version (file classifier-<version>.mar)"),
    validation_share: float = typer.Option(0.2, help="share of each label's photos kept for validation"),
    max_epochs: int = typer.Option(500, help="upper bound; training stops early on the validation loss"),
    patience: int = typer.Option(20, help="epochs without a better validation loss before stopping"),
    learning_rate: float = typer.Option(3e-3, help="Adam's learning rate"),
    seed: int = typer.Option(0, help="seed of the split, the head's initialisation and the shuffling"),
    workers: int = typer.Option(0, help="model workers when served (0: one per core)"),
    runtime: str | None = typer.Option(None, help="onnx or torchscript (default: as `build` chooses)"),
    store: Path | None = typer.Option(None, help="model store directory (default: settings.model_store)"),
    force: bool = typer.Option(False, help="replace an existing archive of this version"),
) -> None:
    """Train a new classifier head on the served backbone (EfficientNet-Lite2) and write its archive."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from handlers.archive import ArchiveError, Batching, archive_info
    from handlers.datasets import DatasetError
    from handlers.train import Progress as Hooks, TrainingConfig, train as run

    config = TrainingConfig(validation_share=validation_share, max_epochs=max_epochs, patience=patience,
                            learning_rate=learning_rate, seed=seed)
    titles = {"features": "backbone features", "epochs": "training the head"}

    class Bars(Hooks):
        def __init__(self, progress: Progress) -> None:
            self.progress = progress
            self.tasks: dict[str, TaskID] = {}

        def start(self, stage: str, total: int) -> None:
            self.tasks[stage] = self.progress.add_task(titles.get(stage, stage), total=total, note="")

        def advance(self, stage: str, steps: int = 1, note: str = "") -> None:
            self.progress.update(self.tasks[stage], advance=steps, note=note)

        def finish(self, stage: str) -> None:
            done = self.progress.tasks[self.tasks[stage]].completed
            self.progress.update(self.tasks[stage], total=done)  # stopped early: a full bar

    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[note]}"), console=Console(stderr=True)) as progress:
            result = run(directory, version, store or _settings().model_store, config,
                         Batching(**({"workers": workers} if workers > 0 else {})), force, Bars(progress),
                         runtime)
    except (DatasetError, ArchiveError) as exc:
        _fail(str(exc))
        return
    best = result.best
    for photo, why in result.skipped.items():
        typer.echo(f"skipped {photo}: {why}", err=True)
    typer.echo(f"trained on {result.train_size} photos, validated on {result.validation_size} "
               f"({len(result.labels)} labels: {', '.join(result.labels)})")
    typer.echo(f"kept epoch {best.epoch} of {result.epochs}{' (stopped early)' if result.stopped_early else ''}: "
               f"validation loss {best.validation_loss:.4f}, validation accuracy {best.validation_accuracy:.1%}, "
               f"training accuracy {result.train_accuracy:.1%}")
    meta = archive_info(result.archive)["meta"]
    typer.echo(f"{result.archive} built: efficientnet_lite2 backbone with the new head, {meta['num_classes']} "
               f"classes, version {version}, {meta.get('runtime', 'torchscript')}")
    _echo_verification(meta)
    typer.echo(f"next: udagram model register {result.archive}; udagram model evaluate DIR --versions "
               f"<default>,{version}; udagram model set-default {version}")


@model_app.command()
def canary(
    version: str | None = typer.Argument(None, help="the candidate version (omit to show the current canary)"),
    share: float = typer.Option(0.1, min=0.0, max=1.0, help="share of new uploads it classifies (0 to 1)"),
    off: bool = typer.Option(False, "--off", help="no canary, whatever the environment says"),
    reset: bool = typer.Option(False, "--reset", help="back to the environment's UDAGRAM_CANARY_* settings"),
) -> None:
    """Send a share of new uploads to a candidate version; the worker follows within an image."""
    from workers.canary import CanaryFileError, effective, write_file

    settings = _settings()
    path = settings.canary_path
    if reset:
        path.unlink(missing_ok=True)
    elif off:
        write_file(path, None, 0.0)
    elif version is not None:
        with _management_errors():
            registered = [v.version for v in _client().versions()]
        if version not in registered:
            _fail(f"{settings.model_name} has no version {version!r} (registered: {', '.join(registered) or 'none'})")
        try:
            write_file(path, version, share)
        except CanaryFileError as exc:
            _fail(str(exc))
    try:
        current = effective(settings)
    except CanaryFileError as exc:  # the worker ignores such a file and uses the environment
        _fail(f"{exc} (the worker ignores it: fix it, or --off / --reset / a new setting replaces it)")
        return
    state = f"{current.share:.0%} of new uploads to version {current.version}" if current.active else "off"
    typer.echo(f"canary: {state} ({current.origin})")
