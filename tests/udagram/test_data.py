"""Pure helpers of the data layer (no servers) and its page/batch queries (moto server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from udagram import data

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
