"""Live updates: GraphQL subscriptions over graphql-transport-ws, served by real `udagram api`
processes (uvicorn) on the moto server (DynamoDB over HTTP). Changes are written to DynamoDB by
this test process, as the worker (another process) writes them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from graphql_api.auth import ADMIN_ROLE, issue_token
from graphql_api.live import Watcher
from tests.graphql_api.servers import ApiProcess, api_process
from tests.graphql_api.tokens import forged
from tests.graphql_api.ws_client import GraphQLSocket
from udagram import data
from udagram.data import ImageModel, ImageStatus

IMAGE_FIELDS = "id status title error modelVersion processedImageUrl"
IMAGE_UPDATED = f"subscription($id: ID!) {{ imageUpdated(id: $id) {{ {IMAGE_FIELDS} }} }}"
GROUP_UPDATED = f"subscription($g: ID!) {{ groupImagesUpdated(groupId: $g) {{ id image {{ {IMAGE_FIELDS} }} }} }}"
JOB_UPDATED = """subscription($id: ID!) { adminJobUpdated(id: $id) {
  __typename ... on AdminJob { id state } ... on Error { code message } } }"""


@pytest.fixture
def api(aws_settings, tmp_path: Path):
    with api_process(aws_settings, tmp_path / "api.log") as process:
        yield process


def _gql(api: ApiProcess, query: str, variables: dict | None = None, user: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {issue_token(user, api.settings)}"} if user else {}
    response = httpx.post(f"{api.url}/graphql", json={"query": query, "variables": variables or {}},
                          headers=headers, timeout=30)
    body = response.json()
    assert response.status_code == 200 and not body.get("errors"), body
    return body["data"]


def _group(api: ApiProcess, user: str = "alice") -> str:
    result = _gql(api, 'mutation { createGroup(input: {name: "Live"}) { ... on Group { id } } }', user=user)
    return result["createGroup"]["id"]


def _image(api: ApiProcess, group_id: str, user: str = "alice", caption: str = "cat") -> str:
    result = _gql(api, """mutation($g: ID!, $c: String!) { createImage(input: {groupId: $g, caption: $c,
        contentType: "image/jpeg", contentLength: 10}) { ... on ImageUpload { image { id } } } }""",
                  {"g": group_id, "c": caption}, user=user)
    return result["createImage"]["image"]["id"]


def _finish(image_id: str, title: str = "tabby - 77.0%") -> None:
    """What the worker's final write does (another process than the API)."""
    ImageModel(image_id).update(actions=[
        ImageModel.status.set(ImageStatus.DONE.value), ImageModel.status_changed_at.set(data.sortable_time()),
        ImageModel.title.set(title), ImageModel.model_version.set("classifier 1.0"),
        ImageModel.processed_key.set(data.processed_key(image_id)), ImageModel.processed_at.set(data.utcnow())])


def test_a_status_change_written_to_dynamodb_reaches_the_subscriber(api):
    image_id = _image(api, _group(api))
    with GraphQLSocket(api.ws_url) as ws:
        assert ws.init() == {"type": "connection_ack"}  # anonymous: images are public
        ws.subscribe("1", IMAGE_UPDATED, {"id": image_id})
        first = ws.next_data("1")["imageUpdated"]  # the current state, at once
        assert first["id"] == image_id and first["status"] == "AWAITING_UPLOAD" and first["title"] == "cat"
        _finish(image_id)
        done = ws.next_data("1")["imageUpdated"]
        assert done["status"] == "DONE" and done["title"] == "tabby - 77.0%"
        assert done["modelVersion"] == "classifier 1.0" and "/processed/" in done["processedImageUrl"]
        # Deleted: null, then the subscription ends.
        _gql(api, 'mutation($id: ID!) { deleteImage(id: $id) { __typename } }', {"id": image_id}, user="alice")
        assert ws.next_data("1") == {"imageUpdated": None}
        assert ws.message_for("1") == {"id": "1", "type": "complete"}


def test_two_api_processes_both_deliver(aws_settings, tmp_path):
    """Two API processes of one site (one public URL, as behind a load balancer): a change made
    through one, and one written by the worker, reach subscribers of both. Nothing is fanned out
    between the processes: each reads DynamoDB."""
    with api_process(aws_settings, tmp_path / "a.log") as a, \
            api_process(aws_settings, tmp_path / "b.log", public_url=a.url) as b:
        group_id = _group(a)
        image_id = _image(a, group_id)
        with GraphQLSocket(a.ws_url) as on_a, GraphQLSocket(b.ws_url) as on_b:
            for ws in (on_a, on_b):
                assert ws.init()["type"] == "connection_ack"
                ws.subscribe("img", IMAGE_UPDATED, {"id": image_id})
                ws.subscribe("grp", GROUP_UPDATED, {"g": group_id})
                assert ws.next_data("img")["imageUpdated"]["status"] == "AWAITING_UPLOAD"
                assert ws.next_data("grp")["groupImagesUpdated"]["image"]["status"] == "AWAITING_UPLOAD"
            _finish(image_id)
            for ws in (on_a, on_b):
                assert ws.next_data("img")["imageUpdated"]["status"] == "DONE"
                assert ws.next_data("grp")["groupImagesUpdated"]["image"]["title"] == "tabby - 77.0%"
            # A new image, created through process B, reaches process A's group subscriber.
            new_id = _image(b, group_id, user="bob", caption="dog")
            for ws in (on_a, on_b):
                update = ws.next_data("grp")["groupImagesUpdated"]
                assert update["id"] == new_id and update["image"]["title"] == "dog"


def test_group_subscription_sees_additions_changes_reprocessing_and_deletions(api):
    group_id = _group(api)
    old = _image(api, group_id, caption="old")
    _finish(old)
    with GraphQLSocket(api.ws_url) as ws:
        ws.init()
        ws.subscribe("g", GROUP_UPDATED, {"g": group_id})
        time.sleep(1.5)  # a finished image is no news: nothing comes at first
        new = _image(api, group_id, caption="new")
        update = ws.next_data("g")["groupImagesUpdated"]
        assert update["id"] == new and update["image"]["status"] == "AWAITING_UPLOAD"
        _finish(new, "tiger cat - 51.0%")
        assert ws.next_data("g")["groupImagesUpdated"]["image"]["title"] == "tiger cat - 51.0%"
        # A finished image processed again (its owner's reprocess): PROCESSING, then DONE again.
        result = _gql(api, 'mutation($id: ID!) { reprocessImage(id: $id) { __typename } }', {"id": old}, user="alice")
        assert result["reprocessImage"]["__typename"] == "Image"
        update = ws.next_data("g")["groupImagesUpdated"]
        assert update["id"] == old and update["image"]["status"] == "PROCESSING"
        _finish(old, "lynx - 40.0%")
        assert ws.next_data("g")["groupImagesUpdated"]["image"]["title"] == "lynx - 40.0%"
        # Deleted by its owner: the update says so with a null image.
        _gql(api, 'mutation($id: ID!) { deleteImage(id: $id) { __typename } }', {"id": new}, user="alice")
        assert ws.next_data("g")["groupImagesUpdated"] == {"id": new, "image": None}



# --- who may connect, and limits ----------------------------------------------------------------


@pytest.fixture
def limited_api(aws_settings, tmp_path: Path):
    """An API process with small limits: 4 KiB messages, 3 subscriptions a connection, 5 in all."""
    with api_process(aws_settings, tmp_path / "api.log", UDAGRAM_MAX_REQUEST_BYTES="4096",
                     UDAGRAM_MAX_SUBSCRIPTIONS_PER_CONNECTION="3", UDAGRAM_MAX_SUBSCRIPTIONS_TOTAL="5") as process:
        yield process


def _closed(ws: GraphQLSocket) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as closed:
        ws.receive()
    return closed.value


def test_a_refused_token_in_connection_init_closes_the_socket(api):
    for case in ("expired", "wrong issuer", "alg none", "right kid, other key", "garbage"):
        with GraphQLSocket(api.ws_url) as ws:
            ws.send({"type": "connection_init", "payload": {"authorization": f"Bearer {forged(api.settings, case)}"}})
            assert _closed(ws).rcvd.code == 4403, case


def test_connection_init_authorization_signs_in_for_private_subscriptions(api):
    job_id = data.new_id()
    anonymous_and_refused = [({}, "NotAuthenticated"), ({"authorization": f"Bearer {issue_token('bob', api.settings)}"},
                                                         "Forbidden")]
    for payload, typename in anonymous_and_refused:
        with GraphQLSocket(api.ws_url) as ws:
            assert ws.init(payload) == {"type": "connection_ack"}
            ws.subscribe("job", JOB_UPDATED, {"id": job_id})
            assert ws.next_data("job")["adminJobUpdated"]["__typename"] == typename
            assert ws.message_for("job")["type"] == "complete"
    admin = issue_token("carol", api.settings, roles=(ADMIN_ROLE,))
    with GraphQLSocket(api.ws_url) as ws:
        assert ws.init({"authorization": f"Bearer {admin}"}) == {"type": "connection_ack"}
        ws.subscribe("job", JOB_UPDATED, {"id": job_id})
        assert ws.next_data("job")["adminJobUpdated"] == {"__typename": "NotFound", "code": "NOT_FOUND",
                                                          "message": "no job with this id"}
    with GraphQLSocket(api.ws_url) as ws:  # not a bearer value at all
        ws.send({"type": "connection_init", "payload": {"authorization": "Basic YWxpY2U6cHc="}})
        assert _closed(ws).rcvd.code == 4403


def test_a_foreign_origin_is_refused_the_page_and_tools_are_not(api):
    """Cross-site WebSocket hijacking: a page elsewhere must not open a socket to the API."""
    for origin in ("http://evil.example", "http://127.0.0.1:1", "null"):
        with pytest.raises(InvalidStatus) as refused:
            GraphQLSocket(api.ws_url, origin=origin)
        assert refused.value.response.status_code == 403
    localhost_twin = api.settings.public_url.replace("127.0.0.1", "localhost")
    for origin in (api.settings.public_url, localhost_twin, None):  # the page (either name), a script
        with GraphQLSocket(api.ws_url, origin=origin) as ws:
            assert ws.init() == {"type": "connection_ack"}


def test_an_oversized_message_closes_the_socket(limited_api):
    with GraphQLSocket(limited_api.ws_url) as ws:
        ws.init()
        padding = "x" * 5000
        ws.subscribe("big", f"subscription {{ imageUpdated(id: \"{'a' * 32}\") {{ id }} }} # {padding}")
        assert _closed(ws).rcvd.code == 1009  # message too big


def test_query_limits_apply_to_subscription_documents(limited_api):
    too_many_aliases = ("subscription { groupImagesUpdated(groupId: \"%s\") { image { id } } }" % ("a" * 32)).replace(
        "image { id }", "image { id } " + " ".join(f"a{i}: image {{ id }}" for i in range(40)))
    with GraphQLSocket(limited_api.ws_url) as ws:
        ws.init()
        ws.subscribe("aliases", too_many_aliases)
        message = ws.message_for("aliases")
        assert message["type"] == "error" and "aliases" in message["payload"][0]["message"]
        ws.subscribe("bad", 'subscription { imageUpdated(id: "not-an-id") { id } }')
        message = ws.message_for("bad")
        assert "32 lowercase hex" in str(message["payload"])


def test_subscriptions_are_bounded_per_connection_and_in_all(limited_api):
    group_id = _group(limited_api)
    with GraphQLSocket(limited_api.ws_url) as first, GraphQLSocket(limited_api.ws_url) as second:
        for ws in (first, second):
            ws.init()
        for n in range(3):
            first.subscribe(f"s{n}", GROUP_UPDATED, {"g": group_id})
        first.subscribe("s3", GROUP_UPDATED, {"g": group_id})
        refused = first.message_for("s3")
        assert refused["type"] == "error" and refused["payload"][0]["message"] == "Subscription limit reached"
        second.subscribe("t0", GROUP_UPDATED, {"g": group_id})
        second.subscribe("t1", GROUP_UPDATED, {"g": group_id})
        time.sleep(1)  # the five are running
        second.subscribe("t2", GROUP_UPDATED, {"g": group_id})
        message = second.message_for("t2")
        assert "live subscriptions" in str(message["payload"]), message
        # Ending one makes room again.
        first.send({"id": "s0", "type": "complete"})
        time.sleep(1)
        second.subscribe("t3", IMAGE_UPDATED, {"id": "a" * 32})
        assert second.next_data("t3") == {"imageUpdated": None}  # (no such image)


# --- the cost of watching -----------------------------------------------------------------------


def _calls(operation: str) -> float:
    return data.DYNAMODB_CALLS.labels(operation)._value.get()


def test_a_watcher_tick_costs_one_batch_call_per_100_watched_ids(aws_settings):
    """250 watched images in 3 groups: 3 BatchGetItem calls for the images, 1 for the groups, and
    a Query only for a group whose change marker moved (and, by default, for a few seconds after, in
    case the index lags)."""
    now = data.utcnow()
    groups = []
    for n in range(3):
        group = data.GroupModel(id=data.new_id(), created_key=data.created_key(now, str(n)), name="g", owner="a",
                                created_at=now)
        group.save()
        groups.append(group.id)
    images = []
    with ImageModel.batch_write() as batch:
        for n in range(250):
            image_id = data.new_id()
            images.append(image_id)
            batch.save(ImageModel(id=image_id, group_id=groups[n % 3], created_key=data.created_key(now, image_id),
                                  owner="a", status_changed_at=data.sortable_time(now), content_type="image/jpeg",
                                  content_length=1, original_key=f"originals/{image_id}.jpg", created_at=now,
                                  status=ImageStatus.DONE.value))

    async def measure() -> tuple[dict, dict]:
        watcher = Watcher(aws_settings.model_copy(update={"live_poll_seconds": 3600}))
        watcher.group_requery_seconds = 0  # (no second look at a group after its marker moved: counted exactly)
        async with _watching(watcher, [("image", i) for i in images] + [("group", g) for g in groups]):
            await watcher.close()  # no background ticks: only the ones measured here
            await watcher.tick()  # the first read: every group's images once
            before = {op: _calls(op) for op in ("BatchGetItem", "Query")}
            for _ in range(2):
                await watcher.tick()
            steady = {op: _calls(op) - before[op] for op in before}
            data.add_to_image_count(groups[0], 0)  # moves the first group's marker
            before = {op: _calls(op) for op in before}
            await watcher.tick()
            return steady, {op: _calls(op) - before[op] for op in before}

    steady, after_change = asyncio.run(measure())
    assert steady == {"BatchGetItem": 2 * (3 + 1), "Query": 0}
    assert after_change == {"BatchGetItem": 3 + 1, "Query": 1}


class _watching:
    """Subscribes a watcher to many items at once (an async context manager)."""

    def __init__(self, watcher: Watcher, items: list[tuple[str, str]]) -> None:
        self.contexts = [watcher.watch(kind, item_id) for kind, item_id in items]

    async def __aenter__(self) -> None:
        for context in self.contexts:
            await context.__aenter__()

    async def __aexit__(self, *exc) -> None:
        for context in self.contexts:
            await context.__aexit__(None, None, None)
