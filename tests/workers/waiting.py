"""Waiting for the worker: an image record read consistently, until its final write is complete."""

from __future__ import annotations

import time
from collections.abc import Callable

from udagram import data


def record(image_id: str) -> data.ImageModel:
    return data.ImageModel.get(image_id, consistent_read=True)


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _wait_records(image_ids: list[str], finished: Callable[[data.ImageModel], object], timeout: float,
                  what: str) -> list[data.ImageModel]:
    def all_finished():
        records = [record(i) for i in image_ids]
        return records if all(finished(r) for r in records) else None

    return wait_for(all_finished, timeout, f"images {image_ids} {what}")  # type: ignore[return-value]


def wait_status(image_ids: list[str], statuses=("DONE", "FAILED"), timeout: float = 90) -> list[data.ImageModel]:
    # moto applies an UpdateItem's actions one by one, so a read can land half-way through the
    # worker's final write (status DONE, processed_at not yet set): wait for the whole write.
    return _wait_records(image_ids, lambda r: r.status in statuses and (r.status != "DONE" or r.processed_at),
                         timeout, f"to reach {statuses}")


def wait_settled(image_ids: list[str], statuses=("DONE", "FAILED"), timeout: float = 90) -> list[data.ImageModel]:
    """Like wait_status, but also waits for the rest of the final write: moto applies an
    UpdateItem's actions one by one, and every final write (DONE, FAILED, a re-run's kept result)
    removes the lease last."""
    return _wait_records(image_ids, lambda r: r.status in statuses and r.lease_expires_at is None,
                         timeout, f"settled in {statuses}")
