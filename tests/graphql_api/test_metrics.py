"""The API's /metrics route: Prometheus text with the DynamoDB calls this process made."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

GROUP_PAGE = """query($id: ID!) { group(id: $id) { id images(first: 5) { edges { node { id title } } } } }"""


def dynamodb_calls(api) -> dict[str, float]:
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        sample.labels["operation"]: sample.value
        for family in text_string_to_metric_families(response.text)
        if family.name == "udagram_dynamodb_calls"
        for sample in family.samples
        if sample.name == "udagram_dynamodb_calls_total"
    }


def test_metrics_count_each_dynamodb_call_by_operation(api, monkeypatch):
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
    before = dynamodb_calls(api)
    page = api.gql(GROUP_PAGE, {"id": group["id"]})["group"]
    after = dynamodb_calls(api)
    assert len(page["images"]["edges"]) == 3
    assert sent, "the page query made no DynamoDB call"
    increase = {op: after[op] - before.get(op, 0.0) for op in after if after[op] != before.get(op, 0.0)}
    assert increase == {op: float(sent.count(op)) for op in set(sent)}
