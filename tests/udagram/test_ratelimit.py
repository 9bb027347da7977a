"""udagram.ratelimit against DynamoDB on the moto server: a sliding window shared by processes."""

from __future__ import annotations

from udagram import ratelimit

WINDOW = 60
T0 = 1_800_000_000  # a window boundary (a multiple of 60)


def test_hits_are_allowed_up_to_the_limit_then_refused(aws_settings):
    decisions = [ratelimit.hit("k", 3, WINDOW, now=T0 + 10) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert 0 < decisions[-1].retry_after <= 2 * WINDOW
    # other keys are independent
    assert ratelimit.hit("other", 3, WINDOW, now=T0 + 10).allowed


def test_check_counts_nothing(aws_settings):
    for _ in range(2):
        ratelimit.hit("k", 3, WINDOW, now=T0 + 1)
    for _ in range(5):
        assert ratelimit.check("k", 3, WINDOW, now=T0 + 2).allowed  # room for a third
    ratelimit.hit("k", 3, WINDOW, now=T0 + 3)
    blocked = ratelimit.check("k", 3, WINDOW, now=T0 + 4)
    assert not blocked.allowed and blocked.retry_after > 0


def test_the_window_slides_no_burst_across_its_boundary(aws_settings):
    for _ in range(3):
        ratelimit.hit("k", 3, WINDOW, now=T0 + 59)
    # just after the boundary the previous window still counts almost fully
    assert not ratelimit.check("k", 3, WINDOW, now=T0 + 61).allowed
    blocked = ratelimit.check("k", 3, WINDOW, now=T0 + 61)
    # ... and it says when: once a third of the previous window has slid out (3 * 2/3 + 1 = 3 fits)
    assert ratelimit.check("k", 3, WINDOW, now=T0 + 61 + blocked.retry_after).allowed
    assert not ratelimit.check("k", 3, WINDOW, now=T0 + 61 + blocked.retry_after - 2).allowed
    # two windows later it is all forgotten
    assert ratelimit.hit("k", 3, WINDOW, now=T0 + 2 * WINDOW + 1).allowed
