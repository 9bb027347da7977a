"""The API's Prometheus metrics: on their own listener (loopback by default), with the DynamoDB calls
this process made; not on the public app."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from graphql_api.app import start_metrics_server
from tests.fixtures.ports import free_port

GROUP_PAGE = """query($id: ID!) { group(id: $id) { id images(first: 5) { edges { node { id title } } } } }"""


@pytest.fixture
def metrics_url(aws_settings):
    settings = aws_settings.model_copy(update={"api_metrics_port": free_port()})
    server = start_metrics_server(settings)
    try:
        yield f"http://{settings.api_metrics_host}:{settings.api_metrics_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def dynamodb_calls(metrics_url: str) -> dict[str, float]:
    response = httpx.get(metrics_url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        sample.labels["operation"]: sample.value
        for family in text_string_to_metric_families(response.text)
        if family.name == "udagram_dynamodb_calls"
        for sample in family.samples
        if sample.name == "udagram_dynamodb_calls_total"
    }


def test_public_app_serves_no_metrics(api):
    assert api.client.get("/metrics").status_code == 404


def test_metrics_count_each_dynamodb_call_by_operation(api, metrics_url, monkeypatch):
    from pynamodb.connection.base import Connection

    group = api.create_group("alice", "counted")
    for _ in range(3):
        api.create_image("alice", group["id"])
    sent: list[str] = []  # counted independently, below PynamoDB's signal
    real = Connection.dispatch

    def counting(self, operation_name, operation_kwargs):
        sent.append(operation_name)
        return real(self, operation_name, operation_kwargs)

    monkeypatch.setattr(Connection, "dispatch", counting)
    before = dynamodb_calls(metrics_url)
    page = api.gql(GROUP_PAGE, {"id": group["id"]})["group"]
    after = dynamodb_calls(metrics_url)
    assert len(page["images"]["edges"]) == 3
    assert sent, "the page query made no DynamoDB call"
    increase = {op: after[op] - before.get(op, 0.0) for op in after if after[op] != before.get(op, 0.0)}
    assert increase == {op: float(sent.count(op)) for op in set(sent)}
