"""The API in-process (Starlette TestClient) over S3/SQS/DynamoDB on the moto server subprocess."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from graphql_api.app import create_app
from graphql_api.auth import issue_token
from udagram.aws import client
from udagram.jobs import REPROCESS_SOURCE
from udagram.settings import Settings


class Api:
    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def token(self, user: str) -> str:
        return issue_token(user, self.settings)

    def post(self, query: str, variables: dict | None = None, *, user: str | None = None,
             token: str | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if user is not None:
            token = self.token(user)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)

    def gql(self, query: str, variables: dict | None = None, **kwargs: Any) -> dict:
        """`data` of a successful response (asserts there are no errors)."""
        response = self.post(query, variables, **kwargs)
        assert response.status_code == 200, response.text
        body = response.json()
        assert not body.get("errors"), body
        return body["data"]

    # --- shortcuts -------------------------------------------------------------------------------
    def create_group(self, user: str, name: str = "Dogs", description: str = "") -> dict:
        result = self.gql(CREATE_GROUP, {"input": {"name": name, "description": description}}, user=user)
        return result["createGroup"]

    def create_image(self, user: str, group_id: str, **fields: Any) -> dict:
        values = {"groupId": group_id, "contentType": "image/jpeg", "contentLength": 1000, **fields}
        return self.gql(CREATE_IMAGE, {"input": values}, user=user)["createImage"]


CREATE_GROUP = """
mutation($input: CreateGroupInput!) {
  createGroup(input: $input) {
    __typename
    ... on Group { id name description owner createdAt imageCount }
    ... on Error { code message }
    ... on InvalidInput { field }
  }
}"""

CREATE_IMAGE = """
mutation($input: CreateImageInput!) {
  createImage(input: $input) {
    __typename
    ... on ImageUpload {
      image { id groupId owner caption title status imageUrl processedImageUrl createdAt }
      upload { url fields expiresAt }
    }
    ... on Error { code message }
    ... on InvalidInput { field }
    ... on UploadTooLarge { maxBytes }
    ... on UnsupportedContentType { allowed }
    ... on NotFound { id }
  }
}"""

DELETE_IMAGE = """
mutation($id: ID!) { deleteImage(id: $id) { __typename ... on Deleted { id } ... on Error { code message } } }"""

DELETE_GROUP = """
mutation($id: ID!) { deleteGroup(id: $id) { __typename ... on Deleted { id } ... on Error { code message } } }"""

REPROCESS = """
mutation($id: ID!) {
  reprocessImage(id: $id) { __typename ... on Image { id status error } ... on Error { code message } }
}"""


def queued_reprocess_ids(settings: Settings) -> list[str]:
    """The image ids of every re-run message on the uploads queue (received until it is empty)."""
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
    ids: list[str] = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                          VisibilityTimeout=60).get("Messages", []):
        for message in messages:
            for record in json.loads(message["Body"]).get("Records", []):
                if record.get("eventSource") == REPROCESS_SOURCE:
                    ids.append(record["imageId"])
    return ids


@pytest.fixture
def api(aws_settings: Settings):
    with TestClient(create_app(aws_settings)) as client:
        yield Api(client, aws_settings)


@pytest.fixture
def dynamodb_calls_sent(monkeypatch) -> list[str]:
    """The DynamoDB operations sent from now on, in order (counted below PynamoDB's own signal)."""
    from pynamodb.connection.base import Connection

    sent: list[str] = []
    real = Connection.dispatch

    def counting(self, operation_name, operation_kwargs):
        sent.append(operation_name)
        return real(self, operation_name, operation_kwargs)

    monkeypatch.setattr(Connection, "dispatch", counting)
    return sent
