"""udagram/waiting.py: polling a state until it comes true or a deadline passes."""

from __future__ import annotations

import time

import pytest

from udagram.waiting import poll_until


def test_returns_the_first_result_that_is_done_without_waiting_more() -> None:
    answers = iter([None, None, 42, 43])
    calls = []

    def check() -> int | None:
        calls.append(time.monotonic())
        return next(answers)

    assert poll_until(check, done=bool, timeout=30, interval=0.01) == 42
    assert len(calls) == 3


def test_returns_the_last_result_at_the_deadline() -> None:
    calls = []
    started = time.monotonic()
    assert poll_until(lambda: calls.append(1) or [7], done=lambda alive: not alive, timeout=0.2, interval=0.05) == [7]
    assert time.monotonic() - started >= 0.2
    assert len(calls) >= 2  # it kept asking until the deadline


def test_an_error_is_not_a_not_yet() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken"):
        poll_until(check, done=bool, timeout=30, interval=0.01)
    assert len(calls) == 1
