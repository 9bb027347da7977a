"""Rate limits shared by every process: counters in DynamoDB (`data.RateLimitModel`).

`hit(key, limit, window_seconds)` counts one event for `key` and answers whether it stays within
`limit` events per `window_seconds`; `check(...)` answers whether one more would, without
counting it (e.g. a sign-in is refused before its password is checked once the failures reached
the limit, and only failures are counted).

The count is a sliding window estimated from two fixed windows, the current one and the one
before it weighted by how much of it still overlaps the sliding window (one atomic ADD and one
read per hit; no burst of 2x the limit across a window boundary). Counters expire by DynamoDB
TTL two windows after they start.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from pynamodb.exceptions import DoesNotExist

from udagram.data import RateLimitModel


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int  # seconds until the key is below its limit again (0 when allowed)


def _count(item_id: str) -> int:
    try:
        return int(RateLimitModel.get(item_id, consistent_read=True).hits)
    except DoesNotExist:
        return 0


def _decide(key: str, limit: int, window: int, cost: int, now: float | None) -> Decision:
    if limit < 0 or window <= 0:
        raise ValueError("limit must be >= 0 and window_seconds > 0")
    now = time.time() if now is None else now
    start = int(now // window) * window
    current_id, previous_id = f"{key}#{start}", f"{key}#{start - window}"
    if cost:
        item = RateLimitModel(id=current_id)
        item.update(actions=[
            RateLimitModel.hits.add(cost),
            RateLimitModel.expires_at.set(datetime.fromtimestamp(start + 2 * window, timezone.utc)),
        ])
        current = int(item.hits)
    else:
        current = _count(current_id) + 1  # as if this one were counted
    previous = _count(previous_id)
    overlap = 1 - (now - start) / window  # share of the previous window still inside the sliding one
    estimate = previous * overlap + current
    if estimate <= limit:
        return Decision(True, 0)
    if current > limit:
        # Over by this window alone: wait for it to end and then slide out far enough.
        wait = (start + window - now) + window * (1 - limit / current)
    else:
        # The previous window's share must shrink until the estimate fits.
        wait = window * (1 - (limit - current) / previous) - (now - start)
    return Decision(False, max(1, math.ceil(wait)))


def hit(key: str, limit: int, window_seconds: int, *, now: float | None = None) -> Decision:
    """Count one event for `key`; allowed if at most `limit` happened in the last `window_seconds`."""
    return _decide(key, limit, window_seconds, 1, now)


def check(key: str, limit: int, window_seconds: int, *, now: float | None = None) -> Decision:
    """Whether one more event for `key` would be allowed now (nothing is counted)."""
    return _decide(key, limit, window_seconds, 0, now)
