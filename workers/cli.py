"""`udagram worker` and `udagram reprocess`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("reprocess")(reprocess)


def worker(
    metrics_port: int | None = typer.Option(None, help="Prometheus port (default: settings.worker_metrics_port)."),
    reconcile_on_start: bool | None = typer.Option(None, "--reconcile/--no-reconcile",
                                                      help="Re-queue stranded images on start."),
) -> None:
    """Run the image worker in the foreground (SQS -> TorchServe -> processed image); SIGTERM stops it."""
    import signal
    import threading

    import structlog
    from prometheus_client import start_http_server

    from udagram import data, logs, resources
    from udagram.settings import get_settings
    from udagram.waiting import until_it_works
    from workers.consumer import Consumer

    settings = get_settings()
    logs.configure(settings)
    log = structlog.get_logger("workers")
    stop_requested = threading.Event()
    consumer: Consumer | None = None

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received", signal=signal.Signals(signum).name)
        stop_requested.set()
        if consumer is not None:
            consumer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    def start_consumer() -> Consumer:
        resources.ensure_resources(settings)
        data.configure(settings)
        return Consumer(settings, reconcile_on_start=reconcile_on_start)

    # S3/SQS/DynamoDB may still be starting, or the resources not made yet (the local stack and
    # the compose file start everything at once): wait.
    consumer = until_it_works(start_consumer, lambda exc: log.warning(
        "AWS services not ready; retrying", error=f"{type(exc).__name__}: {exc}"), stop=stop_requested)
    if consumer is None or stop_requested.is_set():
        raise typer.Exit(0)
    port = metrics_port if metrics_port is not None else settings.worker_metrics_port
    start_http_server(port, addr=settings.host)
    log.info("worker started", queue=settings.queue_name, concurrency=settings.worker_concurrency,
             metrics=f"http://{settings.host}:{port}/metrics", torchserve=settings.torchserve_inference_url)
    consumer.run()
    # Everything is durable or handed back by now; threads still busy with a released image
    # would only be refused at their final write, so don't wait for them.
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def reprocess(
    image: list[str] = typer.Option([], "--image", help="Image id (repeatable)."),
    group: list[str] = typer.Option([], "--group", help="Every image of this group (repeatable)."),
    all_images: bool = typer.Option(False, "--all", help="Every image."),
    model_version: str | None = typer.Option(
        None, "--model-version",
        help="Run through this TorchServe version of the classifier; images already DONE with it are skipped."),
    max_outstanding: int | None = typer.Option(
        None, help="Feed re-runs only while the queue holds fewer messages (default: settings)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the re-runs until they are finished."),
) -> None:
    """Queue images again (e.g. after a new model version became default), at a pace that leaves
    room for new uploads, with a progress bar."""
    from workers.reprocess import run

    if not (image or group or all_images):
        raise typer.BadParameter("give --image ID, --group ID or --all")
    code = run(images=image, groups=group, all_images=all_images, model_version=model_version,
               max_outstanding=max_outstanding, wait=wait)
    raise typer.Exit(code)
