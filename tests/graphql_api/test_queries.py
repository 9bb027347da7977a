"""Queries: public reads, pagination, ids validated, DataLoaders batch."""

from __future__ import annotations

import pytest

from udagram import data

GROUPS_PAGE = """
query($first: Int, $after: String) {
  groups(first: $first, after: $after) {
    edges { cursor node { id name imageCount } }
    pageInfo { hasNextPage endCursor }
  }
}"""

GROUP = """
query($id: ID!, $first: Int, $after: String) {
  group(id: $id) {
    id name description owner createdAt imageCount
    images(first: $first, after: $after) {
      edges { cursor node { id groupId owner caption title status imageUrl processedImageUrl
                            predictions { label probability } modelVersion error createdAt processedAt } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""

IMAGE = """
query($id: ID!) {
  image(id: $id) { id groupId owner caption title status imageUrl processedImageUrl
                   predictions { label probability } modelVersion error createdAt processedAt }
}"""


@pytest.mark.parametrize("signed_in", [False, True])
def test_reads_are_public_and_the_same_signed_in_or_not(api, signed_in):
    group = api.create_group("alice", "Cats", "all cats")
    image = api.create_image("alice", group["id"], caption="Tom")["image"]
    user = "bob" if signed_in else None

    groups = api.gql(GROUPS_PAGE, {}, user=user)["groups"]
    assert [e["node"]["name"] for e in groups["edges"]] == ["Cats"]
    assert groups["edges"][0]["node"]["imageCount"] == 1

    got = api.gql(GROUP, {"id": group["id"]}, user=user)["group"]
    assert got["name"] == "Cats" and got["description"] == "all cats" and got["owner"] == "alice"
    node = got["images"]["edges"][0]["node"]
    assert node["id"] == image["id"] and node["title"] == "Tom" and node["status"] == "AWAITING_UPLOAD"
    assert node["imageUrl"] is None  # nothing uploaded yet
    assert node["predictions"] == []

    one = api.gql(IMAGE, {"id": image["id"]}, user=user)["image"]
    assert one["groupId"] == group["id"] and one["caption"] == "Tom" and one["processedAt"] is None


def test_me(api):
    assert api.gql("{ me { id } }")["me"] is None
    assert api.gql("{ me { id } }", user="alice")["me"] == {"id": "alice"}
    # a bad token on a read is ignored: reading stays public
    assert api.gql("{ me { id } }", token="garbage")["me"] is None


def test_unknown_ids_are_null_and_invalid_ids_a_clear_error(api):
    assert api.gql(IMAGE, {"id": "0" * 32})["image"] is None
    assert api.gql(GROUP, {"id": "0" * 32})["group"] is None
    for query in (IMAGE, GROUP):
        body = api.post(query, {"id": "../etc/passwd"}).json()
        assert body["errors"][0]["message"].endswith("id must be 32 lowercase hex characters")
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_done_image_shows_predictions_and_processed_url(api):
    group = api.create_group("alice")
    image = api.create_image("alice", group["id"], fileName="rex.jpg")["image"]
    assert image["title"] == "rex.jpg"  # no caption: the file name until processed
    model = data.ImageModel.get(image["id"])
    model.update(actions=[
        data.ImageModel.status.set("DONE"),
        data.ImageModel.title.set("Labrador retriever - 77.0%"),
        data.ImageModel.predictions.set([data.Prediction(label="Labrador retriever", probability=0.77),
                                         data.Prediction(label="golden retriever", probability=0.1)]),
        data.ImageModel.processed_key.set(data.processed_key(image["id"])),
        data.ImageModel.model_version.set("classifier/1.0"),
        data.ImageModel.processed_at.set(data.utcnow()),
    ])
    got = api.gql(IMAGE, {"id": image["id"]})["image"]
    assert got["status"] == "DONE" and got["title"] == "Labrador retriever - 77.0%"
    assert got["predictions"][0] == {"label": "Labrador retriever", "probability": pytest.approx(0.77)}
    assert got["modelVersion"] == "classifier/1.0" and got["processedAt"]
    assert api.settings.processed_bucket in got["processedImageUrl"]
    assert "X-Amz-Signature" in got["processedImageUrl"] and "X-Amz-Expires=3600" in got["processedImageUrl"]
    assert api.settings.originals_bucket in got["imageUrl"]


def test_groups_pagination_walks_every_page_newest_first_without_duplicates(api):
    created = [api.create_group("alice", f"g{i}")["id"] for i in range(7)]
    seen, after, pages = [], None, 0
    while True:
        page = api.gql(GROUPS_PAGE, {"first": 3, "after": after})["groups"]
        pages += 1
        seen += [e["node"]["id"] for e in page["edges"]]
        assert page["pageInfo"]["endCursor"] == (page["edges"][-1]["cursor"] if page["edges"] else None)
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert pages == 3
    assert seen == list(reversed(created))  # newest first, each exactly once


def test_group_images_pagination(api):
    group = api.create_group("alice")
    created = [api.create_image("alice", group["id"], caption=str(i))["image"]["id"] for i in range(5)]
    seen, after = [], None
    while True:
        page = api.gql(GROUP, {"id": group["id"], "first": 2, "after": after})["group"]["images"]
        seen += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == list(reversed(created))
    assert api.gql(GROUP, {"id": group["id"]})["group"]["imageCount"] == 5


def test_page_size_is_bounded_and_cursors_validated(api):
    for first in (0, -1, api.settings.page_size_max + 1):
        body = api.post(GROUPS_PAGE, {"first": first}).json()
        assert body["errors"][0]["message"] == f"`first` must be between 1 and {api.settings.page_size_max}"
    body = api.post(GROUPS_PAGE, {"after": "not-a-cursor"}).json()
    assert "cursor" in body["errors"][0]["message"]


def test_default_page_size_applies(api):
    api.settings.page_size_default = 2
    for i in range(3):
        api.create_group("alice", f"g{i}")
    page = api.gql(GROUPS_PAGE, {})["groups"]
    assert len(page["edges"]) == 2 and page["pageInfo"]["hasNextPage"] is True


def test_image_lookups_in_one_request_are_batched(api, monkeypatch):
    group = api.create_group("alice")
    ids = [api.create_image("alice", group["id"])["image"]["id"] for _ in range(4)]
    calls = []
    real = data.batch_get

    def counting(model, keys):
        calls.append((model.__name__, list(keys)))
        return real(model, keys)

    monkeypatch.setattr(data, "batch_get", counting)
    query = "query {" + " ".join(f'i{n}: image(id: "{i}") {{ id }}' for n, i in enumerate(ids)) + \
        f' g: group(id: "{group["id"]}") {{ id }} }}'
    got = api.gql(query)
    assert [got[f"i{n}"]["id"] for n in range(4)] == ids
    assert calls == [("ImageModel", ids), ("GroupModel", [group["id"]])] or \
        calls == [("GroupModel", [group["id"]]), ("ImageModel", ids)]


def test_dynamodb_calls_per_page_are_bounded(api, dynamodb_calls_sent):
    groups = [api.create_group("alice", f"g{i}")["id"] for i in range(4)]
    for gid in groups:
        for _ in range(3):
            api.create_image("alice", gid)
    calls = dynamodb_calls_sent
    calls.clear()
    query = """{ groups(first: 4) { edges { node { id imageCount
                 images(first: 2) { edges { node { id title imageUrl processedImageUrl } } pageInfo { hasNextPage } }
               } } } }"""
    page = api.gql(query)["groups"]["edges"]
    assert [len(e["node"]["images"]["edges"]) for e in page] == [2, 2, 2, 2]
    assert all(e["node"]["imageCount"] == 3 and e["node"]["images"]["pageInfo"]["hasNextPage"] for e in page)
    # one Query for the groups page + one per group's image page; no per-item GetItem
    assert calls == ["Query"] * 5
