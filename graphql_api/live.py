"""Live updates behind the GraphQL subscriptions: one watcher per API process reads DynamoDB.

DynamoDB is the source of truth; nothing is fanned out between processes. While anyone is
subscribed, each API process's `Watcher` reads, every `live_poll_seconds`:
- the watched images (`imageUpdated`, and the unfinished images of watched groups) and jobs with
  BatchGetItem (100 keys a call);
- the watched groups' change markers (`GroupModel.image_changes`, bumped with every addition,
  deletion and re-run of one of its images) with BatchGetItem; only a group whose marker moved
  costs one Query of its newest `live_group_window` images (by_group), to find new and deleted
  images and finished images that are processed again.
So a tick costs about (watched images + groups + jobs) / 100 calls, plus one Query per group that
changed. Changes go to each subscription's `Mailbox` in this process. Any number of API processes
each do the same, so every subscriber is served by the process its socket is on.

Reads are eventually consistent (half the price); an image is only ever published forward
(`status_changed_at` never goes back), and an image that seems gone is read again strongly
consistently before it is reported deleted. A group's index may lag its marker: a group is
queried again for `GROUP_REQUERY_SECONDS` after its marker moved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from udagram import data
from udagram.data import ImageModel, ImageStatus, JobModel
from udagram.settings import Settings

log = structlog.get_logger(__name__)

FINAL = {ImageStatus.DONE.value, ImageStatus.FAILED.value}
GROUP_REQUERY_SECONDS = 5.0  # how long a group's index may lag behind its marker
ERROR_BACKOFF_MAX_SECONDS = 30.0


class TooManySubscriptions(Exception):
    """This process holds `max_subscriptions_total` subscriptions already."""


class Gone:
    """Published when a watched group is deleted: its subscriptions end."""


GONE = Gone()


class Mailbox:
    """What one subscription has not taken yet: the newest value per key, so a slow client gets
    the latest state of each item rather than a growing backlog."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] = {}
        self._ready = asyncio.Event()

    def put(self, key: str, value: Any) -> None:
        self._pending.pop(key, None)  # re-inserted last: updates come out in the order they happened
        self._pending[key] = value
        self._ready.set()

    async def take(self) -> list[tuple[str, Any]]:
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        items = list(self._pending.items())
        self._pending.clear()
        return items


def image_state(image: ImageModel) -> tuple:
    """What a subscriber sees change (the worker's writes all move `status_changed_at`)."""
    return (image.status_changed_at, image.status, image.title, image.error, image.model_version,
            image.processed_at, image.processed_key)


def job_state(job: JobModel) -> tuple:
    """First a number that only grows (the counters, then the end), like an image's change time."""
    progress = int(job.queued or 0) + int(job.finished or 0) + (job.state == data.JobState.DONE.value)
    return (progress, job.state, job.total, job.queued, job.finished)


@dataclass
class _Topic:
    """One watched record and the mailboxes of its subscribers; `fresh` ones still need the
    current state (sent at the next read)."""

    mailboxes: set[Mailbox] = field(default_factory=set)
    fresh: set[Mailbox] = field(default_factory=set)
    state: tuple | None = None
    record: Any = None
    seen: bool = False


@dataclass
class _GroupTopic(_Topic):
    marker: Any = None
    requery_until: float = 0.0
    window: dict[str, tuple] = field(default_factory=dict)  # image id -> (created_key, state)
    # Read by id every tick: the unfinished images (None: one the window no longer lists, read to
    # confirm that it was deleted).
    unfinished: dict[str, ImageModel | None] = field(default_factory=dict)


class Watcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.images: dict[str, _Topic] = {}
        self.jobs: dict[str, _Topic] = {}
        self.groups: dict[str, _GroupTopic] = {}
        self.subscriptions = 0
        self.ticks = 0  # reads done (tests and metrics look at it)
        self.group_requery_seconds = GROUP_REQUERY_SECONDS
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # --- subscribing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(self, kind: str, item_id: str) -> AsyncIterator[Mailbox]:
        """A mailbox for changes of one image, group or job, for as long as the block runs.
        Its first message is the current state (for a group: its unfinished images)."""
        if self.subscriptions >= self.settings.max_subscriptions_total:
            raise TooManySubscriptions(
                f"this server holds {self.settings.max_subscriptions_total} live subscriptions; try again later")
        topics = self._topics(kind)
        topic = topics.get(item_id)
        if topic is None:
            topic = topics[item_id] = _GroupTopic() if kind == "group" else _Topic()
        mailbox = Mailbox()
        topic.mailboxes.add(mailbox)
        topic.fresh.add(mailbox)
        self.subscriptions += 1
        self._ensure_running()
        self._wake.set()
        try:
            yield mailbox
        finally:
            self.subscriptions -= 1
            topic.mailboxes.discard(mailbox)
            topic.fresh.discard(mailbox)
            if not topic.mailboxes and topics.get(item_id) is topic:
                del topics[item_id]

    def _topics(self, kind: str) -> dict[str, Any]:
        topics: dict[str, dict[str, Any]] = {"image": self.images, "group": self.groups, "job": self.jobs}
        return topics[kind]

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="live-watcher")

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None

    # --- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self.subscriptions:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self.tick()
                failures = 0
                delay = self.settings.live_poll_seconds
            except Exception as exc:  # DynamoDB down or slow: keep the subscriptions, back off
                failures += 1
                delay = min(ERROR_BACKOFF_MAX_SECONDS, self.settings.live_poll_seconds * 2 ** failures)
                log.warning("live updates: reading DynamoDB failed", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)

    async def tick(self) -> None:
        """One read of everything watched, and the changes handed to the mailboxes."""
        self.ticks += 1
        group_ids = list(self.groups)
        job_ids = list(self.jobs)
        markers, jobs = await asyncio.to_thread(self._read_groups_and_jobs, group_ids, job_ids)
        now = time.monotonic()
        to_query = []
        for group_id in group_ids:
            topic = self.groups.get(group_id)
            if topic is None:
                continue
            if group_id not in markers:
                self._publish_group_gone(group_id, topic)
                continue
            if not topic.seen or markers[group_id] != topic.marker:
                topic.requery_until = now + self.group_requery_seconds
            topic.marker = markers[group_id]
            if now <= topic.requery_until:
                to_query.append(group_id)
        windows = await asyncio.to_thread(self._read_windows, to_query) if to_query else {}
        for group_id, window in windows.items():
            if group_id in self.groups:
                self._apply_window(group_id, self.groups[group_id], window)

        image_ids = set(self.images)
        for topic in self.groups.values():
            image_ids |= set(topic.unfinished)
        images = await asyncio.to_thread(self._read_images, image_ids) if image_ids else {}
        for image_id in image_ids:
            self._apply_image(image_id, images.get(image_id))
        for group_id, topic in list(self.groups.items()):
            if topic.seen or group_id in windows:
                topic.seen = True
                for mailbox in topic.fresh:  # the current unfinished images
                    for image_id, image in topic.unfinished.items():
                        if image is not None:  # (None: to be read, maybe deleted)
                            mailbox.put(image_id, image)
                topic.fresh.clear()
        for job_id in job_ids:
            if job_id in self.jobs:
                self._apply(self.jobs[job_id], job_id, jobs.get(job_id), job_state)

    # --- blocking reads (in a worker thread) ------------------------------------------------------

    def _read_groups_and_jobs(self, group_ids: list[str], job_ids: list[str]) -> tuple[dict, dict]:
        groups = _batch_get(data.GroupModel, group_ids, attributes_to_get=["id", "image_changes"])
        markers = {group_id: group.image_changes for group_id, group in groups.items()}
        return markers, _batch_get(JobModel, job_ids)

    def _read_windows(self, group_ids: list[str]) -> dict[str, list[ImageModel]]:
        return {group_id: data.page_group_images(group_id, self.settings.live_group_window)[0]
                for group_id in group_ids}

    def _read_images(self, image_ids: Iterable[str]) -> dict[str, ImageModel]:
        return _batch_get(ImageModel, image_ids)

    # --- applying what was read ------------------------------------------------------------------

    def _apply(self, topic: _Topic, key: str, record: Any, state_of: Callable[[Any], tuple]) -> bool:
        """Publish `record` (None: deleted) if it changed; the fresh mailboxes get it anyway."""
        state = state_of(record) if record is not None else None
        changed = not topic.seen or state != topic.state
        if changed and state is not None and topic.state is not None and state[0] < topic.state[0]:
            changed = False  # an older copy (eventually consistent read): keep the newer one
        if changed:
            topic.state, topic.record, topic.seen = state, record, True
        for mailbox in topic.mailboxes if changed else topic.fresh:
            mailbox.put(key, topic.record)
        topic.fresh.clear()
        return changed

    def _apply_image(self, image_id: str, image: ImageModel | None) -> None:
        topic = self.images.get(image_id)
        if topic is not None:
            self._apply(topic, image_id, image, image_state)
        for group in self.groups.values():
            if image_id in group.unfinished:
                self._apply_group_image(group, image_id, image)

    def _apply_group_image(self, topic: _GroupTopic, image_id: str, image: ImageModel | None) -> None:
        known = topic.window.get(image_id)
        if image is None:
            topic.unfinished.pop(image_id, None)
            if topic.window.pop(image_id, None) is not None:
                self._publish_group(topic, image_id, None)
            return
        state = image_state(image)
        if known is not None and (state == known[1] or state[0] < known[1][0]):
            if known[1][1] in FINAL:  # unchanged (or an older copy) and finished: nothing to follow
                topic.unfinished.pop(image_id, None)
            return
        topic.window[image_id] = (image.created_key, state)
        if image.status in FINAL:
            topic.unfinished.pop(image_id, None)
        else:
            topic.unfinished[image_id] = image
        if topic.seen:  # the first read of a group is its baseline, not news
            self._publish_group(topic, image_id, image)

    def _apply_window(self, group_id: str, topic: _GroupTopic, window: list[ImageModel]) -> None:
        listed = {image.id for image in window}
        oldest = window[-1].created_key if len(window) >= self.settings.live_group_window else ""
        for image_id, (created_key, _) in list(topic.window.items()):
            if image_id in listed:
                continue
            if created_key >= oldest and image_id not in topic.unfinished:
                # Within the window and not listed: deleted (the index may lag: confirmed by the
                # strongly consistent read of _read_images, so only unlisted finished ones here).
                topic.unfinished[image_id] = None  # read by id next: reported once confirmed gone
            elif created_key < oldest:
                del topic.window[image_id]  # slid out of the window: no longer followed
        for image in window:
            self._apply_group_image(topic, image.id, image)

    def _publish_group(self, topic: _GroupTopic, image_id: str, image: ImageModel | None) -> None:
        for mailbox in topic.mailboxes:
            mailbox.put(image_id, image)

    def _publish_group_gone(self, group_id: str, topic: _GroupTopic) -> None:
        for mailbox in topic.mailboxes:
            mailbox.put(group_id, GONE)
        self.groups.pop(group_id, None)


async def cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def _batch_get(model: type[data.IdModel], ids: Iterable[str],
               attributes_to_get: list[str] | None = None) -> dict[str, data.IdModel]:
    """Items by id (BatchGetItem, 100 keys a call, eventually consistent); ids that seem missing are
    read again strongly consistently, so a record written a moment ago is not reported deleted."""
    wanted = [i for i in dict.fromkeys(ids) if data.is_valid_id(i)]
    if not wanted:
        return {}
    found = {item.id: item for item in model.batch_get(wanted, attributes_to_get=attributes_to_get)}
    missing = [i for i in wanted if i not in found]
    if missing:
        found.update({item.id: item for item in model.batch_get(
            missing, consistent_read=True, attributes_to_get=attributes_to_get)})
    return found
