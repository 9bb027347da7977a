"""Waiting for something to come true, with tenacity: polling a state (a daemon answering,
processes gone, programs healthy) until a deadline, and retrying a start-up step until the
services it needs answer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    stop_when_event_set,
    wait_fixed,
)

T = TypeVar("T")


def _last_result(state: RetryCallState) -> Any:
    assert state.outcome is not None  # called after an attempt, which set it
    return state.outcome.result()


def poll_until(check: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float) -> T:
    """Call `check` every `interval` seconds until `done(result)` or `timeout` seconds have passed;
    returns the last result either way (the caller says what a timeout means). An exception from
    `check` is not a "not yet": it propagates at once."""
    return Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda result: not done(result)),
        retry_error_callback=_last_result,
    )(check)


def until_it_works(step: Callable[[], T], on_failure: Callable[[BaseException], None],
                   stop: threading.Event, interval: float = 2.0) -> T | None:
    """Run `step` until it returns without raising (S3/SQS/DynamoDB, or the tables and queues,
    may not be there yet when a process starts), calling `on_failure(exc)` after each failed try
    and waiting `interval` seconds in between. Returns its result, or None once `stop` is set."""

    def report(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        assert failure is not None  # tenacity sleeps only after a failed try
        on_failure(failure)

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # a stop request ends the wait at once

    return Retrying(
        retry=retry_if_exception_type(Exception),
        wait=wait_fixed(interval),
        stop=stop_when_event_set(stop),
        sleep=pause,
        before_sleep=report,
        retry_error_callback=lambda state: None,
    )(lambda: None if stop.is_set() else step())  # no further try once stopped during the wait
