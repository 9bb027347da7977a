"""Mutations: signed in and anonymous, typed errors, ownership, counters, deletion of objects."""

from __future__ import annotations

import httpx
import pytest

from tests.graphql_api.conftest import (
    CREATE_GROUP,
    CREATE_IMAGE,
    DELETE_GROUP,
    DELETE_IMAGE,
    REPROCESS,
    queued_reprocess_ids,
)
from udagram import data
from udagram.aws import client


def _upload(upload: dict, body: bytes, content_type: str = "image/jpeg") -> httpx.Response:
    return httpx.post(upload["url"], data=upload["fields"], files={"file": ("x", body, content_type)}, timeout=30)


def _object_exists(settings, bucket: str, key: str) -> bool:
    try:
        client("s3", settings).head_object(Bucket=bucket, Key=key)
        return True
    except client("s3", settings).exceptions.ClientError:
        return False


ANON_CALLS = [
    (CREATE_GROUP, {"input": {"name": "x"}}, "createGroup"),
    (CREATE_IMAGE, {"input": {"groupId": "a" * 32, "contentType": "image/png", "contentLength": 5}}, "createImage"),
    (DELETE_IMAGE, {"id": "a" * 32}, "deleteImage"),
    (DELETE_GROUP, {"id": "a" * 32}, "deleteGroup"),
    (REPROCESS, {"id": "a" * 32}, "reprocessImage"),
]


@pytest.mark.parametrize("query,variables,field", ANON_CALLS, ids=[c[2] for c in ANON_CALLS])
def test_every_mutation_anonymous_is_a_typed_not_authenticated(api, query, variables, field):
    result = api.gql(query, variables)[field]
    assert result["__typename"] == "NotAuthenticated"
    assert result["code"] == "UNAUTHENTICATED" and result["message"] == "sign in to do this"
    # and with a refused token the message says why
    result = api.gql(query, variables, token="not.a.jwt")[field]
    assert result == {"__typename": "NotAuthenticated", "code": "UNAUTHENTICATED",
                      "message": "sign in to do this: malformed token"}
    assert data.GroupModel.count() == 0 and data.ImageModel.count() == 0


def test_wrong_authorization_scheme_is_explained(api):
    result = api.gql(CREATE_GROUP, {"input": {"name": "x"}}, headers={"Authorization": "Basic abc"})
    assert "Bearer" in result["createGroup"]["message"]


def test_create_group_signed_in(api):
    group = api.create_group("alice", "  My dogs  ", "best friends")
    assert group["__typename"] == "Group"
    assert group["name"] == "My dogs" and group["owner"] == "alice" and group["imageCount"] == 0
    stored = data.GroupModel.get(group["id"])
    assert stored.name == "My dogs" and stored.description == "best friends"


@pytest.mark.parametrize(
    "name,description,field",
    [("", "", "name"), ("   ", "", "name"), ("x" * 81, "", "name"), ("ok", "d" * 501, "description")],
)
def test_create_group_limits(api, name, description, field):
    result = api.create_group("alice", name, description)
    assert result["__typename"] == "InvalidInput" and result["field"] == field and result["code"] == "INVALID_INPUT"
    assert data.GroupModel.count() == 0


def test_create_group_name_at_the_limits_is_accepted(api):
    assert api.create_group("alice", "x" * 80, "d" * 500)["__typename"] == "Group"


def test_create_image_signed_in_returns_record_and_presigned_post(api):
    group = api.create_group("alice")
    result = api.create_image("bob", group["id"], caption="  My dog ", fileName="rex.jpg", contentLength=1234)
    assert result["__typename"] == "ImageUpload"
    image = result["image"]
    assert image["status"] == "AWAITING_UPLOAD" and image["owner"] == "bob"
    assert image["caption"] == "My dog" and image["title"] == "My dog"
    stored = data.ImageModel.get(image["id"])
    assert stored.original_key == f"originals/{image['id']}.jpg"
    assert stored.content_length == 1234 and stored.file_name == "rex.jpg"
    assert result["upload"]["fields"]["key"] == stored.original_key
    assert result["upload"]["expiresAt"]
    assert data.GroupModel.get(group["id"]).image_count == 1


@pytest.mark.parametrize(
    "fields,typename,extra",
    [
        ({"contentType": "text/html"}, "UnsupportedContentType",
         {"allowed": ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"]}),
        ({"contentType": "image/svg+xml"}, "UnsupportedContentType", {}),
        ({"contentLength": 20 * 1024 * 1024 + 1}, "UploadTooLarge", {"maxBytes": 20 * 1024 * 1024}),
        ({"contentLength": 0}, "InvalidInput", {"field": "contentLength"}),
        ({"caption": "c" * 301}, "InvalidInput", {"field": "caption"}),
        ({"fileName": "f" * 256}, "InvalidInput", {"field": "fileName"}),
        ({"groupId": "nope"}, "InvalidInput", {"field": "groupId"}),
        ({"groupId": "0" * 32}, "NotFound", {"id": "0" * 32}),
    ],
)
def test_create_image_refusals_are_typed(api, fields, typename, extra):
    group = api.create_group("alice")
    result = api.create_image("alice", group["id"], **fields)
    assert result["__typename"] == typename, result
    assert result["message"] and result["code"]
    for key, value in extra.items():
        assert result[key] == value
    assert data.ImageModel.count() == 0
    assert data.GroupModel.get(group["id"]).image_count == 0


def test_presigned_post_really_uploads_and_image_url_serves_it(api):
    group = api.create_group("alice")
    result = api.create_image("alice", group["id"], contentType="image/png", contentLength=8)
    response = _upload(result["upload"], b"\x89PNG....", "image/png")
    assert response.status_code in (200, 201, 204), response.text
    key = f"originals/{result['image']['id']}.png"
    obj = client("s3", api.settings).get_object(Bucket=api.settings.originals_bucket, Key=key)
    assert obj["Body"].read() == b"\x89PNG...."
    assert obj["ContentType"] == "image/png"
    # once out of AWAITING_UPLOAD, imageUrl is a presigned GET of that object
    data.ImageModel.get(result["image"]["id"]).update(actions=[data.ImageModel.status.set("PROCESSING")])
    url = api.gql('query($id: ID!) { image(id: $id) { imageUrl } }', {"id": result["image"]["id"]})["image"]["imageUrl"]
    assert httpx.get(url, timeout=30).content == b"\x89PNG...."


def test_delete_image_owner_only_and_removes_objects(api):
    settings = api.settings
    group = api.create_group("alice")
    result = api.create_image("bob", group["id"])
    image_id = result["image"]["id"]
    assert _upload(result["upload"], b"jpeg-bytes").status_code in (200, 201, 204)
    s3 = client("s3", settings)
    s3.put_object(Bucket=settings.processed_bucket, Key=data.processed_key(image_id), Body=b"processed")
    data.ImageModel.get(image_id).update(actions=[data.ImageModel.processed_key.set(data.processed_key(image_id))])

    for user in ("alice", "mallory"):  # the group's owner is not the image's owner either
        refused = api.gql(DELETE_IMAGE, {"id": image_id}, user=user)["deleteImage"]
        assert refused["__typename"] == "NotOwner" and refused["code"] == "FORBIDDEN"
    assert _object_exists(settings, settings.originals_bucket, f"originals/{image_id}.jpg")

    done = api.gql(DELETE_IMAGE, {"id": image_id}, user="bob")["deleteImage"]
    assert done == {"__typename": "Deleted", "id": image_id}
    assert not _object_exists(settings, settings.originals_bucket, f"originals/{image_id}.jpg")
    assert not _object_exists(settings, settings.processed_bucket, data.processed_key(image_id))
    assert data.ImageModel.count() == 0
    assert data.GroupModel.get(group["id"]).image_count == 0

    again = api.gql(DELETE_IMAGE, {"id": image_id}, user="bob")["deleteImage"]
    assert again["__typename"] == "NotFound"
    assert api.gql(DELETE_IMAGE, {"id": "xyz"}, user="bob")["deleteImage"]["__typename"] == "InvalidInput"


def _dynamodb_refuses(monkeypatch, operation: str, code: str = "ProvisionedThroughputExceededException") -> None:
    """DynamoDB answers `operation` with an error other than a failed condition (throttled, down)."""
    from botocore.exceptions import ClientError
    from pynamodb.connection.base import Connection

    real = Connection.dispatch

    def refusing(self, operation_name, operation_kwargs):
        if operation_name == operation:
            raise ClientError({"Error": {"Code": code, "Message": "try again later"}}, operation_name)
        return real(self, operation_name, operation_kwargs)

    monkeypatch.setattr(Connection, "dispatch", refusing)


def test_a_failed_record_delete_is_an_error_and_can_be_retried(api, monkeypatch):
    """DynamoDB failing the DeleteItem is not "someone deleted it meanwhile": the owner gets an
    error, not NotFound, the record stays, and deleting again succeeds."""
    group = api.create_group("alice")
    image_id = api.create_image("bob", group["id"])["image"]["id"]
    with monkeypatch.context() as patch:
        _dynamodb_refuses(patch, "DeleteItem")
        body = api.post(DELETE_IMAGE, {"id": image_id}, user="bob").json()
    assert body["data"] is None or body["data"].get("deleteImage") is None, body
    assert body["errors"][0]["message"] == "Unexpected error."
    assert data.ImageModel.get(image_id, consistent_read=True).id == image_id
    assert api.gql(DELETE_IMAGE, {"id": image_id}, user="bob")["deleteImage"]["__typename"] == "Deleted"
    assert data.GroupModel.get(group["id"]).image_count == 0


def test_a_failed_group_delete_is_an_error_not_a_group_not_empty(api, monkeypatch):
    group = api.create_group("alice")
    with monkeypatch.context() as patch:
        _dynamodb_refuses(patch, "DeleteItem")
        body = api.post(DELETE_GROUP, {"id": group["id"]}, user="alice").json()
    assert body["errors"][0]["message"] == "Unexpected error.", body
    assert data.GroupModel.get(group["id"], consistent_read=True).id == group["id"]
    assert api.gql(DELETE_GROUP, {"id": group["id"]}, user="alice")["deleteGroup"]["__typename"] == "Deleted"


def test_a_failed_counter_update_still_deletes_the_image(api, monkeypatch):
    """The record is gone once DeleteItem succeeded: a failing counter update afterwards is logged,
    not reported as a failed delete."""
    group = api.create_group("alice")
    image_id = api.create_image("bob", group["id"])["image"]["id"]
    with monkeypatch.context() as patch:
        _dynamodb_refuses(patch, "UpdateItem")
        done = api.gql(DELETE_IMAGE, {"id": image_id}, user="bob")["deleteImage"]
    assert done == {"__typename": "Deleted", "id": image_id}
    assert data.ImageModel.count() == 0


def test_delete_group_refused_while_it_holds_other_users_images(api):
    group = api.create_group("alice")
    api.create_image("alice", group["id"])
    bobs = api.create_image("bob", group["id"])["image"]["id"]

    assert api.gql(DELETE_GROUP, {"id": group["id"]}, user="bob")["deleteGroup"]["__typename"] == "NotOwner"
    refused = api.gql(DELETE_GROUP, {"id": group["id"]}, user="alice")["deleteGroup"]
    assert refused["__typename"] == "GroupNotEmpty" and "1 image" in refused["message"]
    assert data.ImageModel.count() == 2 and data.GroupModel.count() == 1

    assert api.gql(DELETE_IMAGE, {"id": bobs}, user="bob")["deleteImage"]["__typename"] == "Deleted"
    assert api.gql(DELETE_GROUP, {"id": group["id"]}, user="alice")["deleteGroup"]["__typename"] == "Deleted"


def test_delete_group_deletes_the_owners_images_and_their_objects(api):
    settings = api.settings
    group = api.create_group("alice")
    other = api.create_group("alice", "kept")
    keys = []
    for _ in range(3):
        result = api.create_image("alice", group["id"])
        assert _upload(result["upload"], b"bytes").status_code in (200, 201, 204)
        keys.append(result["upload"]["fields"]["key"])
    kept = api.create_image("alice", other["id"])["image"]["id"]

    done = api.gql(DELETE_GROUP, {"id": group["id"]}, user="alice")["deleteGroup"]
    assert done == {"__typename": "Deleted", "id": group["id"]}
    assert [m.id for m in data.ImageModel.scan()] == [kept]
    assert [m.id for m in data.GroupModel.scan()] == [other["id"]]
    for key in keys:
        assert not _object_exists(settings, settings.originals_bucket, key)
    assert api.gql(DELETE_GROUP, {"id": group["id"]}, user="alice")["deleteGroup"]["__typename"] == "NotFound"
    assert api.gql(DELETE_GROUP, {"id": "G" * 32}, user="alice")["deleteGroup"]["__typename"] == "InvalidInput"


def test_image_in_a_deleted_group_is_refused(api):
    group = api.create_group("alice")
    api.gql(DELETE_GROUP, {"id": group["id"]}, user="alice")
    assert api.create_image("alice", group["id"])["__typename"] == "NotFound"
    assert data.ImageModel.count() == 0


def test_reprocess_image_owner_only_sets_processing_and_queues(api):
    group = api.create_group("alice")
    result = api.create_image("alice", group["id"])
    image_id = result["image"]["id"]

    not_uploaded = api.gql(REPROCESS, {"id": image_id}, user="alice")["reprocessImage"]
    assert not_uploaded["__typename"] == "NotUploaded"

    data.ImageModel.get(image_id).update(actions=[
        data.ImageModel.status.set("FAILED"), data.ImageModel.error.set("boom"), data.ImageModel.attempts.set(5)])
    assert api.gql(REPROCESS, {"id": image_id}, user="bob")["reprocessImage"]["__typename"] == "NotOwner"
    assert data.ImageModel.get(image_id).status == "FAILED"

    done = api.gql(REPROCESS, {"id": image_id}, user="alice")["reprocessImage"]
    assert done == {"__typename": "Image", "id": image_id, "status": "PROCESSING", "error": None}
    stored = data.ImageModel.get(image_id)
    assert stored.status == "PROCESSING" and stored.error is None and stored.attempts == 0
    assert queued_reprocess_ids(api.settings) == [image_id]

    assert api.gql(REPROCESS, {"id": "0" * 32}, user="alice")["reprocessImage"]["__typename"] == "NotFound"
    assert api.gql(REPROCESS, {"id": "zz"}, user="alice")["reprocessImage"]["__typename"] == "InvalidInput"


def test_reprocess_of_an_uploaded_image_whose_event_was_lost(api):
    group = api.create_group("alice")
    result = api.create_image("alice", group["id"])
    assert _upload(result["upload"], b"bytes").status_code in (200, 201, 204)
    done = api.gql(REPROCESS, {"id": result["image"]["id"]}, user="alice")["reprocessImage"]
    assert done["status"] == "PROCESSING"


def test_create_image_racing_a_group_deletion_leaves_nothing_behind(api, monkeypatch):
    """The group passes the existence check, then is deleted before the counter is raised."""
    from graphql_api.schema import mutations

    group = api.create_group("alice")
    api.gql(DELETE_GROUP, {"id": group["id"]}, user="alice")
    monkeypatch.setattr(mutations.data.GroupModel, "get", classmethod(lambda cls, *a, **k: object()))
    result = api.create_image("alice", group["id"])
    assert result["__typename"] == "NotFound"
    assert data.ImageModel.count() == 0 and data.GroupModel.count() == 0


def test_create_image_whose_counter_update_fails_leaves_no_record(api, monkeypatch):
    """DynamoDB fails after the record was written: the client gets an error (and will retry), and
    no record is left waiting for an upload that will never come."""
    from pynamodb.exceptions import UpdateError

    from graphql_api.schema import mutations

    group = api.create_group("alice")

    def fail(group_id: str, delta: int) -> None:
        raise UpdateError("Failed to update item: connection refused")

    monkeypatch.setattr(mutations.data, "add_to_image_count", fail)
    body = api.post(CREATE_IMAGE, {"input": {"groupId": group["id"], "contentType": "image/jpeg",
                                             "contentLength": 10}}, user="alice").json()
    assert body.get("errors") and body["data"] is None, body
    assert data.ImageModel.count() == 0


def test_delete_group_racing_a_new_image_is_refused(api, monkeypatch):
    """An image arrives after the group's images were listed: the conditional delete refuses."""
    from graphql_api.schema import mutations

    group = api.create_group("alice")
    late = api.create_image("bob", group["id"])["image"]["id"]
    monkeypatch.setattr(mutations, "_group_images", lambda group_id: [])  # listed before it arrived
    refused = api.gql(DELETE_GROUP, {"id": group["id"]}, user="alice")["deleteGroup"]
    assert refused["__typename"] == "GroupNotEmpty" and "meanwhile" in refused["message"]
    assert data.GroupModel.count() == 1 and data.ImageModel.get(late).group_id == group["id"]
