"""The background task of each API process that feeds running bulk jobs (graphql_api/admin/jobs.py).

Every `bulk_feed_interval_seconds` while jobs run (else every `bulk_idle_check_seconds`, or at
once when a job is started in this process) it lists the running jobs (one Query on the jobs
table's `by_state` index) and, for each whose lease it holds or can take, runs one feeding step
in a worker thread: the API's event loop never waits on it. Several API processes may run it: the
lease (a conditional write, as the worker leases images) lets one feed a job at a time, and a job
whose feeder died is taken over when its lease expires (`bulk_job_lease_seconds`).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog

from graphql_api.admin import jobs as bulk
from graphql_api.live import cancel
from udagram import data, jobs
from udagram.aws import client
from udagram.settings import Settings

log = structlog.get_logger(__name__)


class Feeder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owner = uuid.uuid4().hex  # this process, as lease holder
        self.running_jobs = 0  # seen by the last pass
        self._sqs: Any = None
        self._queue_url: str | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._held: dict[str, Any] = {}

    def step(self) -> int:
        """One pass over the running jobs (blocking); how many it fed."""
        running = bulk.running()
        self.running_jobs = len(running)
        fed = 0
        for job in running:
            if not bulk.take_lease(job, self.owner, self.settings.bulk_job_lease_seconds):
                continue
            if self._sqs is None:
                self._sqs = client("sqs", self.settings)
            if self._queue_url is None:
                self._queue_url = jobs.queue_url(self.settings, self._sqs)
            self._held[job.id] = job
            bulk.feed(job, self.owner, self.settings, self._sqs, self._queue_url)
            if job.state != data.JobState.RUNNING.value:
                self._held.pop(job.id, None)
            fed += 1
        return fed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bulk-job-feeder")

    def wake(self) -> None:
        """A job was started here: feed it now rather than at the next idle check."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await asyncio.to_thread(self.step)
            except Exception as exc:  # DynamoDB or SQS down: try again next time
                self._queue_url = None  # the queue may have been re-created
                log.warning("bulk jobs: feeding failed", error=str(exc))
            # With no job running, the jobs table is only looked at now and then (a job started by
            # another process is fed by that one), so an idle API makes no DynamoDB calls of its own.
            pause = (self.settings.bulk_feed_interval_seconds if self.running_jobs
                     else self.settings.bulk_idle_check_seconds)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=pause)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop feeding and give the leases back, so another process takes over at once."""
        await cancel(self._task)
        self._task = None
        held, self._held = list(self._held.values()), {}
        for job in held:
            try:
                await asyncio.to_thread(bulk.release_lease, job, self.owner)
            except Exception as exc:
                log.warning("bulk jobs: lease not given back", job_id=job.id, error=str(exc))
