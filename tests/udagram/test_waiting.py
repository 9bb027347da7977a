"""udagram/waiting.py: polling a state until it comes true or a deadline passes; retrying a
start-up step until it works or a stop is requested."""

from __future__ import annotations

import threading
import time

import pytest

from udagram.waiting import poll_until, until_it_works


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


def test_a_start_up_step_is_retried_until_it_works_and_each_failure_reported() -> None:
    outcomes = iter([ConnectionError("refused"), KeyError("no table"), "ready"])

    def step() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    failures: list[BaseException] = []
    assert until_it_works(step, failures.append, stop=threading.Event(), interval=0.01) == "ready"
    assert [type(e) for e in failures] == [ConnectionError, KeyError]


def test_a_stop_request_ends_the_retries_at_once() -> None:
    stop = threading.Event()
    calls: list[float] = []

    def step() -> None:
        calls.append(time.monotonic())
        raise ConnectionError("refused")

    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert until_it_works(step, lambda exc: None, stop=stop, interval=30) is None
    assert time.monotonic() - started < 10  # not the 30 s interval
    assert len(calls) == 1
