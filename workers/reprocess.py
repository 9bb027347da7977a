"""`udagram reprocess`: select images, queue re-runs without starving uploads, show progress.

Re-runs go on the same queue as uploads but are fed at a bounded pace: a message is added only
while the queue holds fewer than `reprocess_max_outstanding` visible messages. New uploads thus
wait behind at most that many re-runs however many images are re-run (one queue, one code path,
no second queue to provision on AWS).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from udagram import data, jobs
from udagram.aws import client
from udagram.data import ImageModel, ImageStatus
from udagram.model_management import ManagementClient, ManagementError
from udagram.settings import Settings, get_settings


def select(images: Iterable[str], groups: Iterable[str], all_images: bool) -> Iterator[ImageModel]:
    seen: set[str] = set()

    def once(records: Iterable[ImageModel]) -> Iterator[ImageModel]:
        for r in records:
            if r.id not in seen:
                seen.add(r.id)
                yield r

    if all_images:
        yield from once(ImageModel.scan())
        return
    for image_id in images:
        if not data.is_valid_id(image_id):
            raise SystemExit(f"not an image id: {image_id!r}")
        try:
            yield from once([ImageModel.get(image_id)])
        except ImageModel.DoesNotExist:
            raise SystemExit(f"no image {image_id}") from None
    for group_id in groups:
        yield from once(ImageModel.by_group.query(group_id))


def wanted(record: ImageModel, model_label: str | None) -> bool:
    if record.status == ImageStatus.AWAITING_UPLOAD.value:
        return False  # nothing uploaded yet
    return not (model_label and record.status == ImageStatus.DONE.value and record.model_version == model_label)


def check_model_version(settings: Settings, version: str) -> str | None:
    """Why re-running through `version` cannot work (not registered, server down), or None.
    Checked up front: the worker treats a missing model as "not registered yet" and would wait."""
    try:
        registered = ManagementClient.from_settings(settings, timeout=10).has_version(version)
    except ManagementError as exc:
        return str(exc)
    if not registered:
        return f"model {settings.model_name} has no version {version!r} registered (see `udagram model list`)"
    return None


def run(*, images: list[str], groups: list[str], all_images: bool, model_version: str | None,
        max_outstanding: int | None, wait: bool, settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    data.configure(settings)
    console = Console(stderr=True)
    label = f"{settings.model_name} {model_version}" if model_version else None
    if model_version:
        problem = check_model_version(settings, model_version)
        if problem:
            console.print(f"[red]{problem}[/red]")
            return 2
    ids = [r.id for r in select(images, groups, all_images) if wanted(r, label)]
    if not ids:
        console.print("nothing to re-run")
        return 0
    sqs = client("sqs", settings)
    url = jobs.queue_url(settings, sqs)
    limit = max(1, max_outstanding or settings.reprocess_max_outstanding)
    started = data.utcnow()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        queued = progress.add_task("queued", total=len(ids))
        finished = progress.add_task("finished", total=len(ids), visible=wait)
        pending = list(ids)
        while pending:
            room = jobs.reprocess_room(sqs, url, limit)
            if room > 0:
                batch, pending = pending[:room], pending[room:]
                jobs.enqueue_reprocess(batch, model_version, settings=settings, sqs=sqs)
                progress.advance(queued, len(batch))
            if wait:
                progress.update(finished, completed=_finished(ids, started))
            if pending:
                time.sleep(0.5)
        while wait:
            n = _finished(ids, started)
            progress.update(finished, completed=n)
            if n >= len(ids):
                break
            time.sleep(1.0)
    if wait:
        failed = sum(1 for r in ImageModel.batch_get(ids) if r.status == ImageStatus.FAILED.value)
        console.print(f"re-ran {len(ids)} images" + (f", {failed} FAILED" if failed else ""))
        return 1 if failed else 0
    console.print(f"queued {len(ids)} re-runs")
    return 0


def _finished(ids: list[str], since) -> int:
    """Images done with since the re-run started (DONE or FAILED again, or deleted meanwhile)."""
    records = list(ImageModel.batch_get(ids))
    n = len(ids) - len(records)  # deleted by their owner during the re-run
    for r in records:
        if r.status == ImageStatus.DONE.value and r.processed_at and r.processed_at >= since:
            n += 1
        elif r.status == ImageStatus.FAILED.value and r.status_changed_at >= data.sortable_time(since):
            n += 1
    return n
