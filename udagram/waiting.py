"""Waiting for something to come true: one tenacity policy for the loops that poll a state
(a daemon answering, processes gone, programs healthy) until a deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

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
