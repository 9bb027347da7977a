"""Pure helpers of the data layer (no servers) and its page/batch queries (moto server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from udagram import data, image_records

ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("value,ok", [(ID, True), (ID + "\n", False), (ID.upper(), False), (ID[:-1], False),
                                      ("", False), (None, False), ("../" + ID[3:], False)])
def test_is_valid_id(value, ok):
    assert data.is_valid_id(value) is ok


def test_created_key_orders_by_time_and_is_a_valid_cursor():
    t = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    a, b = data.created_key(t, ID), data.created_key(t + timedelta(microseconds=1), ID)
    assert a < b and data.is_valid_created_key(a)
    assert not data.is_valid_created_key(a + "\n") and not data.is_valid_created_key("x#" + ID)


@pytest.mark.parametrize("key,expected", [
    (f"originals/{ID}.jpg", ID), (f"processed/{ID}.png", ID), (f"originals/{ID}.jpg\n", None),
    (f"other/{ID}.jpg", None), (f"originals/{ID}", None),
])
def test_image_id_from_key(key, expected):
    assert data.image_id_from_key(key) == expected


def _group(i: int) -> data.GroupModel:
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)
    gid = data.new_id()
    return data.GroupModel(id=gid, created_key=data.created_key(now, gid), name=f"g{i}", owner="a", created_at=now)


def _depth(expression: str) -> int:
    depth = deepest = 0
    for char in expression:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


def _serialized(condition) -> tuple[str, dict, dict]:
    names: dict = {}
    values: dict = {}
    return condition.serialize(names, values), names, values


def test_flat_merges_nested_ands_and_ors_and_keeps_the_meaning():
    M = data.ImageModel
    a, b, c, d = M.id.exists(), M.lease_owner == "t", M.lease_expires_at < 5, M.original_key == "k"
    e = M.status.is_in("DONE", "FAILED")
    nested = a & (b | c | d) & d & ~(e & b)
    expression, names, values = _serialized(data.flat(nested))
    # NOT binds tighter than AND, AND than OR: every group keeps its own parentheses.
    assert expression == ("(attribute_exists (#0) AND (#1 = :0 OR #2 < :1 OR #3 = :2) AND #3 = :3"
                          " AND (NOT (#4 IN (:4, :5) AND #1 = :6)))")
    assert (names, values) == _serialized(nested)[1:]
    assert _depth(expression) == 4 < _depth(_serialized(nested)[0])  # 4: the IN list inside NOT (...)
    assert _serialized(data.flat(a)) == _serialized(a)


def test_image_record_writes_send_flat_conditions(monkeypatch):
    """dynalite (the local DynamoDB) parses in time exponential in the parentheses' depth: the
    worker's lease took 40-70 ms there nested, 10-17 flat."""
    sent: list[str] = []

    def update(self, actions, condition):
        sent.append(_serialized(condition)[0])

    monkeypatch.setattr(data.ImageModel, "update", update)
    image_records.acquire_lease(ID, "token", 60, s3_original_key="originals/x.jpg", s3_etag="etag")
    assert len(sent) == 1 and _depth(sent[0]) <= 4  # it was 6


def test_page_groups_and_batch_get(aws_settings):
    groups = [_group(i) for i in range(5)]
    for g in groups:
        g.save()
    first, more = data.page_groups(2)
    assert [g.name for g in first] == ["g4", "g3"] and more
    rest, more = data.page_groups(10, first[-1].created_key)
    assert [g.name for g in rest] == ["g2", "g1", "g0"] and not more
    found = data.batch_get(data.GroupModel, [groups[0].id, "not-an-id", "f" * 32, groups[0].id])
    assert list(found) == [groups[0].id]
    data.add_to_image_count(groups[1].id, 2)
    data.add_to_image_count(groups[1].id, -1)
    assert data.GroupModel.get(groups[1].id).image_count == 1
    from pynamodb.exceptions import UpdateError

    with pytest.raises(UpdateError):
        data.add_to_image_count("f" * 32, 1)  # no such group: refused, nothing created
    assert data.GroupModel.count() == 5
