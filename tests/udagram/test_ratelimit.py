"""udagram/ratelimit.py against DynamoDB stand-ins over HTTP (the moto server; dynalite where
concurrent updates must be serialised): fixed windows, atomic under concurrency (several API
processes share it), TTL on the counters."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from udagram import data, ratelimit
from udagram.aws import client

WINDOW_START = 1_700_000_040.0  # a multiple of 60: the start of a 60 s window


def test_a_window_allows_limit_calls_then_says_when_to_retry(aws_settings):
    decisions = [ratelimit.hit("k", 3, 60, now=WINDOW_START + 10) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].retry_after == 50 and decisions[-1].retry_after_seconds == 50
    # refused calls do not count; the next window starts afresh
    assert ratelimit.hit("k", 3, 60, now=WINDOW_START + 59.5).retry_after_seconds == 1
    assert ratelimit.hit("k", 3, 60, now=WINDOW_START + 60).allowed


def test_keys_and_window_lengths_are_independent(aws_settings):
    assert ratelimit.hit("a", 1, 60, now=WINDOW_START).allowed
    assert not ratelimit.hit("a", 1, 60, now=WINDOW_START).allowed
    assert ratelimit.hit("b", 1, 60, now=WINDOW_START).allowed
    assert ratelimit.hit("a", 1, 3600, now=WINDOW_START).allowed  # another limit on the same key


def test_concurrent_callers_never_exceed_the_limit(aws_settings, dynalite):
    """Several API processes at once: the conditional ADD lets exactly `limit` through. On dynalite,
    which (like DynamoDB) applies one update of an item at a time; moto does not, and lets extra
    calls through when they race."""
    data.ensure_tables(aws_settings.model_copy(update={"dynamodb_endpoint_url": dynalite}))
    with ThreadPoolExecutor(16) as pool:
        decisions = list(pool.map(lambda _: ratelimit.hit("busy", 5, 60, now=WINDOW_START), range(40)))
    assert sum(d.allowed for d in decisions) == 5
    assert sorted(d.remaining for d in decisions if d.allowed) == [0, 1, 2, 3, 4]


def test_counters_expire_by_ttl(aws_settings):
    ratelimit.hit("ttl", 2, 60, now=WINDOW_START + 1)
    dynamodb = client("dynamodb", aws_settings)
    ttl = dynamodb.describe_time_to_live(TableName=aws_settings.rate_limits_table)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "expires_at"
    item = dynamodb.get_item(TableName=aws_settings.rate_limits_table, Key={"key": {"S": "ttl#60#28333334"}})["Item"]
    assert item["hits"] == {"N": "1"}
    assert int(item["expires_at"]["N"]) == WINDOW_START + 120  # the window's end plus one window


def test_check_answers_without_counting(aws_settings):
    """For limits on failures: check before an attempt, hit only when it failed."""
    for _ in range(5):
        assert ratelimit.check("failures", 2, 60, now=WINDOW_START + 1).allowed  # counts nothing
    ratelimit.hit("failures", 2, 60, now=WINDOW_START + 2)
    assert ratelimit.check("failures", 2, 60, now=WINDOW_START + 3).remaining == 1
    ratelimit.hit("failures", 2, 60, now=WINDOW_START + 4)
    blocked = ratelimit.check("failures", 2, 60, now=WINDOW_START + 5)
    assert not blocked.allowed and blocked.retry_after_seconds == 55
    assert ratelimit.check("failures", 2, 60, now=WINDOW_START + 60).allowed  # a new window
