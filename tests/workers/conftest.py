"""Worker test fixtures: settings with short timeouts, and a Consumer running in a thread. The
helpers tests call are modules beside this: uploads.py, queues.py, waiting.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from udagram import data, resources
from udagram.settings import Settings

FAST = dict(
    worker_poll_seconds=1,
    worker_visibility_timeout_seconds=6,
    worker_retry_base_seconds=1,
    worker_retry_max_seconds=4,
    worker_concurrency=4,
    worker_shutdown_grace_seconds=5,
    worker_stale_processing_seconds=2,
    worker_reconcile_on_start=False,
    worker_reconcile_interval_seconds=0,
    worker_stale_upload_seconds=0,
    worker_orphan_grace_seconds=1,
)


@pytest.fixture
def make_settings(aws_settings: Settings, torchserve) -> Callable[..., Settings]:
    """Settings on the moto server and the session's TorchServe (`torchserve=` another one)."""

    def make(torchserve=torchserve, **overrides) -> Settings:
        values = dict(FAST, **torchserve.settings_overrides())
        values.update(overrides)
        settings = aws_settings.model_copy(update=values)
        resources.ensure_queues(settings)  # converge the queue's visibility timeout
        data.configure(settings)
        return settings

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


class RunningConsumer:
    def __init__(self, settings: Settings):
        from workers.consumer import Consumer

        self.consumer = Consumer(settings)
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        self.consumer.processor.classifier.close()


@pytest.fixture
def start_worker() -> Iterator[Callable[[Settings], RunningConsumer]]:
    started: list[RunningConsumer] = []

    def start(settings: Settings) -> RunningConsumer:
        worker = RunningConsumer(settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.thread.is_alive():
            worker.stop()
