"""searchImages, labels and Image.confident over the label index (udagram/labels.py), and the
index following deleteImage / deleteGroup."""

from __future__ import annotations

import pytest

from tests.graphql_api.conftest import DELETE_GROUP, DELETE_IMAGE
from udagram import data, labels

SEARCH = """
query($label: String!, $min: Float, $first: Int, $after: String) {
  searchImages(label: $label, minProbability: $min, first: $first, after: $after) {
    edges { cursor node { id groupId title confident predictions { label probability } } }
    pageInfo { hasNextPage endCursor }
  }
}"""

LABELS = "query($prefix: String, $first: Int) { labels(prefix: $prefix, first: $first) { label count } }"


def processed(api, group_id: str, predictions: list[tuple[str, float]], user: str = "alice") -> str:
    """An image as the worker leaves it: DONE with these predictions, indexed."""
    image_id = api.create_image(user, group_id)["image"]["id"]
    data.ImageModel(image_id).update(actions=[
        data.ImageModel.status.set("DONE"),
        data.ImageModel.predictions.set([data.Prediction(label=label, probability=p) for label, p in predictions]),
    ])
    labels.sync_image(image_id, api.settings.confidence_threshold)
    return image_id


def search_ids(api, label: str, **variables) -> list[str]:
    page = api.gql(SEARCH, {"label": label, **variables})["searchImages"]
    return [edge["node"]["id"] for edge in page["edges"]]


def test_search_finds_confident_labels_newest_first_page_by_page(api):
    group = api.create_group("alice")["id"]
    cats = [processed(api, group, [("tabby", 0.5 + i / 100), ("tiger cat", 0.3)]) for i in range(5)]
    unsure = processed(api, group, [("tabby", 0.15), ("lynx", 0.1)])  # below 0.2: titled "Probably", not found
    dog = processed(api, group, [("Labrador retriever", 0.9)])

    seen, after, pages = [], None, 0
    while True:
        page = api.gql(SEARCH, {"label": "TABBY", "first": 2, "after": after})["searchImages"]
        pages += 1
        seen += [e["node"]["id"] for e in page["edges"]]
        assert all(e["cursor"] and e["node"]["groupId"] == group for e in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == list(reversed(cats)) and pages == 3
    assert unsure not in seen and dog not in seen
    assert search_ids(api, "labrador retriever") == [dog]
    assert search_ids(api, "  Tiger   Cat ") == list(reversed(cats))  # whitespace and case do not matter
    assert search_ids(api, "tiger") == []  # whole labels, not words
    assert search_ids(api, "tabby", min=0.535) == list(reversed(cats[4:]))  # 0.54 only (0.53 is below)

    edges = api.gql(SEARCH, {"label": "tabby"})["searchImages"]["edges"]
    confident = {e["node"]["id"]: e["node"]["confident"] for e in edges}
    assert set(confident.values()) == {True}
    image = api.gql("query($id: ID!) { image(id: $id) { confident } }", {"id": unsure})["image"]
    assert image == {"confident": False}
    pending = api.create_image("alice", group)["image"]["id"]
    assert api.gql("query($id: ID!) { image(id: $id) { confident } }", {"id": pending})["image"] == {"confident": None}


def test_labels_for_autocomplete(api):
    group = api.create_group("alice")["id"]
    processed(api, group, [("tabby", 0.6), ("tiger cat", 0.3)])
    processed(api, group, [("tabby", 0.7), ("table lamp", 0.1)])
    processed(api, group, [("Egyptian cat", 0.8)])
    assert api.gql(LABELS, {"prefix": "Ta"})["labels"] == [{"label": "tabby", "count": 2}]
    assert api.gql(LABELS, {"prefix": "t", "first": 1})["labels"] == [{"label": "tabby", "count": 2}]
    assert api.gql(LABELS, {})["labels"] == [
        {"label": "Egyptian cat", "count": 1}, {"label": "tabby", "count": 2}, {"label": "tiger cat", "count": 1}]


@pytest.mark.parametrize("query,variables,message", [
    (SEARCH, {"label": "   "}, "`label` must not be empty"),
    (SEARCH, {"label": "x" * 101}, "`label` must be at most 100 characters"),
    (SEARCH, {"label": "\ufdfa" * 10}, "`label` must be at most 100 characters"),  # 180 once normalised
    (SEARCH, {"label": "tabby", "min": -0.1}, "`minProbability` must be between 0 and 1"),
    (SEARCH, {"label": "tabby", "min": 1.5}, "`minProbability` must be between 0 and 1"),
    (SEARCH, {"label": "tabby", "first": 0}, "`first` must be between 1 and 100"),
    (SEARCH, {"label": "tabby", "first": 101}, "`first` must be between 1 and 100"),
    (SEARCH, {"label": "tabby", "after": "tabby#1"}, "`after` is not a cursor this API handed out"),
    (LABELS, {"prefix": "x" * 101}, "`prefix` must be at most 100 characters"),
    (LABELS, {"first": 1000}, "`first` must be between 1 and 100"),
])
def test_bad_arguments_get_a_clear_error(api, query, variables, message):
    body = api.post(query, variables).json()
    assert body["data"] is None
    assert body["errors"][0]["message"] == message
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_deleting_images_and_groups_removes_them_from_search_and_counts(api):
    group = api.create_group("alice")["id"]
    first = processed(api, group, [("tabby", 0.6), ("lynx", 0.3)])
    second = processed(api, group, [("tabby", 0.5)])
    other_group = api.create_group("alice", "other")["id"]
    kept = processed(api, other_group, [("tabby", 0.4)])

    assert api.gql(DELETE_IMAGE, {"id": first}, user="alice")["deleteImage"]["__typename"] == "Deleted"
    assert search_ids(api, "tabby") == [kept, second] and search_ids(api, "lynx") == []
    assert api.gql(LABELS, {})["labels"] == [{"label": "tabby", "count": 2}]
    assert api.gql(DELETE_GROUP, {"id": group}, user="alice")["deleteGroup"]["__typename"] == "Deleted"
    assert search_ids(api, "tabby") == [kept]
    assert api.gql(LABELS, {})["labels"] == [{"label": "tabby", "count": 1}]
    assert {e.image_id for e in data.ImageLabelModel.scan()} == {kept}


def test_search_trusts_the_record_over_an_index_update_still_under_way(api):
    group = api.create_group("alice")["id"]
    rerun = processed(api, group, [("tabby", 0.6)])
    deleted = processed(api, group, [("tabby", 0.5)])
    shown = processed(api, group, [("tabby", 0.4)])
    # A re-run's new predictions are written, its index update has not happened yet; a record is
    # gone whose entries were not removed yet.
    data.ImageModel(rerun).update(actions=[data.ImageModel.predictions.set(
        [data.Prediction(label="lynx", probability=0.9)])])
    data.ImageModel(deleted).delete()
    page = api.gql(SEARCH, {"label": "tabby"})["searchImages"]
    assert [e["node"]["id"] for e in page["edges"]] == [shown]


def test_a_search_page_costs_the_same_few_dynamodb_calls_whatever_its_size(api, dynamodb_calls_sent):
    group = api.create_group("alice")["id"]
    for i in range(12):
        processed(api, group, [("tabby", 0.9 if i % 3 == 0 else 0.4)])
    sent = dynamodb_calls_sent
    sent.clear()
    for first in (2, 10):
        sent.clear()
        page = api.gql(SEARCH, {"label": "tabby", "first": first})["searchImages"]
        assert len(page["edges"]) == first
        assert sent == ["Query", "BatchGetItem"]  # the page of entries, then its images in one batch
    sent.clear()
    page = api.gql(SEARCH, {"label": "tabby", "first": 3, "min": 0.8})["searchImages"]
    assert len(page["edges"]) == 3 and all(e["node"]["predictions"][0]["probability"] >= 0.8 for e in page["edges"])
    assert sent.count("Query") <= labels.SEARCH_QUERY_CALLS and sent.count("BatchGetItem") == 1
