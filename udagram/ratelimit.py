"""Fixed-window rate limits kept in DynamoDB, so every API process counts against the same limit.

    decision = ratelimit.hit("reprocess:user:alice", limit=10, window_seconds=60)
    if not decision.allowed: ...  # tell the caller to come back in decision.retry_after seconds

`check(...)` answers the same question without counting (a limit on failed sign-ins checks first
and counts only the failures: graphql_api/oidc_provider.py).

Each (key, window) is one item whose `hits` is raised by an atomic ADD, conditional on it being
below the limit: one UpdateItem per call, and concurrent callers (threads, processes) never let
more than `limit` through in a window. Items carry a TTL (`expires_at`, the window's end plus one
window) so DynamoDB deletes them; stand-ins without TTL support (dynalite) just keep them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from pynamodb.attributes import NumberAttribute, TTLAttribute, UnicodeAttribute
from pynamodb.exceptions import UpdateError
from pynamodb.models import Model


class RateLimitModel(Model):
    class Meta:
        table_name = "udagram-rate-limits"  # settings.rate_limits_table (udagram/data.py configures it)
        region = "us-east-1"

    key = UnicodeAttribute(hash_key=True)  # "<caller's key>#<window seconds>#<window number>"
    hits = NumberAttribute(default=0)
    expires_at = TTLAttribute()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until the window ends (0 when allowed)
    remaining: int  # calls left in this window after this one

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds to wait, as a client is told: at least 1 when refused."""
        return 0 if self.allowed else max(1, math.ceil(self.retry_after))


def check(key: str, limit: int, window_seconds: int, now: float | None = None) -> Decision:
    """Whether a `hit` for `key` would be allowed now, counting nothing (one strongly consistent
    read). For limits on failures: check before the attempt, `hit` only when it fails."""
    now = time.time() if now is None else now
    window = int(now // window_seconds)
    window_end = (window + 1) * window_seconds
    try:
        hits = int(RateLimitModel.get(f"{key}#{window_seconds}#{window}", consistent_read=True).hits)
    except RateLimitModel.DoesNotExist:
        hits = 0
    if hits < limit:
        return Decision(allowed=True, retry_after=0.0, remaining=limit - hits)
    return Decision(allowed=False, retry_after=max(window_end - now, 0.0), remaining=0)


def hit(key: str, limit: int, window_seconds: int, now: float | None = None) -> Decision:
    """Count one call against `limit` calls per `window_seconds` for `key` (refused calls do not count)."""
    now = time.time() if now is None else now
    window = int(now // window_seconds)
    window_end = (window + 1) * window_seconds
    item = RateLimitModel(f"{key}#{window_seconds}#{window}")
    try:
        item.update(
            actions=[
                RateLimitModel.hits.add(1),
                RateLimitModel.expires_at.set(datetime.fromtimestamp(window_end + window_seconds, UTC)),
            ],
            condition=RateLimitModel.hits.does_not_exist() | (RateLimitModel.hits < limit),
        )
    except UpdateError as exc:
        if getattr(exc, "cause_response_code", None) != "ConditionalCheckFailedException":
            raise
        return Decision(allowed=False, retry_after=max(window_end - now, 0.0), remaining=0)
    return Decision(allowed=True, retry_after=0.0, remaining=max(limit - int(item.hits), 0))
