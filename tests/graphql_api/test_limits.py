"""Query limits (graphql_api/schema/limits.py): cost, depth, aliases and repeated fields, checked in
one linear pass before graphql-core validates the document."""

from __future__ import annotations

import itertools

import pytest
from graphql import get_introspection_query, parse

from graphql_api.schema import build_schema
from graphql_api.schema.limits import DocumentAnalysis
from tests.graphql_api.hostile import fragment_doubling, repeated_field
from udagram.settings import Settings


def analyse(query: str, variables: dict | None = None, **overrides) -> tuple[DocumentAnalysis, list]:
    settings = Settings(**overrides)
    analysis = DocumentAnalysis(build_schema(settings)._schema, parse(query), variables, settings)
    return analysis, list(analysis.figures())


def _errors(response) -> list[dict]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.get("data") is None, body
    return body["errors"]


def test_fragment_doubling_attack_is_refused_before_execution(api):
    """The outside test's document: 20 fragments, each spreading the next twice (~220 tokens).
    Strawberry's depth and alias limiters walked its 2^20 paths: 9 s of blocked event loop."""
    query = fragment_doubling(20)
    assert len(query.split()) < 300  # small: under every size limit
    errors = _errors(api.post(query))
    costly = [e for e in errors if e.get("extensions", {}).get("code") == "QUERY_TOO_COSTLY"]
    assert costly, errors
    assert costly[0]["extensions"]["maxCost"] == api.settings.max_query_cost
    assert costly[0]["extensions"]["cost"] > api.settings.max_query_cost
    assert "over the limit of" in costly[0]["message"]


def test_analysis_work_grows_linearly_with_fragment_doubling_depth():
    """Deterministic boundedness: each fragment is summarised once, so the work (selections visited
    plus response paths merged) grows by the same amount per level, while the paths (and the cost)
    double per level."""
    work, costs = [], []
    for levels in range(2, 26):
        analysis, (figures,) = analyse(fragment_doubling(levels))
        work.append(analysis.work)
        costs.append(figures.cost)
    steps = {b - a for a, b in itertools.pairwise(work)}
    assert len(steps) == 1, work  # linear: a constant step
    assert work[-1] < 200
    # ...while what the document expands to doubles per level (the cost counts it: 2 fields a path)
    assert costs[-1] == 1 + 20 * (1 + 1 + 2 * 2**25)


def test_cost_of_known_queries():
    nested = "{ groups(first: 20) { edges { node { id images(first: 20) { edges { node { id } } } } } } }"
    assert analyse(nested)[1][0].cost == 1 + 20 * (1 + 1 + 1 + (1 + 20 * (1 + 1 + 1)))  # 1281
    # no `first`: the default page size; a variable's value; beyond the page-size maximum: the maximum
    assert analyse("{ groups { edges { node { id } } } }")[1][0].cost == 1 + 20 * 3
    by_variable = "query($n: Int) { groups(first: $n) { edges { node { id } } } }"
    assert analyse(by_variable, {"n": 7})[1][0].cost == 1 + 7 * 3
    assert analyse("query($n: Int = 5) { groups(first: $n) { pageInfo { hasNextPage } } }")[1][0].cost == 1 + 5 * 2
    assert analyse("{ groups(first: 100000) { edges { cursor } } }")[1][0].cost == 1 + 100 * 2
    # fragments and inline fragments add what they select; aliases and depth through fragments
    _, (figures,) = analyse("{ a: me { ...U } b: me { ...U } } fragment U on User { ... on User { i: id } }")
    assert (figures.cost, figures.aliases, figures.depth) == (4, 4, 1)


def test_costly_query_is_refused_and_a_cheaper_page_answers(api):
    query = """query($n: Int) { groups(first: $n) { edges { node { id name
                 images(first: $n) { edges { node { id title imageUrl } } } } } } }"""
    errors = _errors(api.post(query, {"n": 100}))
    assert errors[0]["extensions"] == {"code": "QUERY_TOO_COSTLY", "cost": 1 + 100 * (1 + 1 + 2 + 1 + 100 * 5),
                                       "maxCost": api.settings.max_query_cost}
    group = api.create_group("alice", "g")
    image = api.create_image("alice", group["id"], caption="x")["image"]
    page = api.gql(query, {"n": 10})["groups"]["edges"]
    assert page[0]["node"]["images"]["edges"][0]["node"]["id"] == image["id"]


def test_legitimate_deep_and_wide_queries_still_work(api):
    group = api.create_group("alice", "Cats")
    image = api.create_image("alice", group["id"], caption="Tom")["image"]
    deep_wide = """query($id: ID!) {
      group(id: $id) { id name description owner createdAt imageCount
        images(first: 100) { edges { cursor node { ...ImageFields } } pageInfo { hasNextPage endCursor } } }
      groups(first: 50) { edges { node { id name images(first: 3) { edges { node { id status } } } } } }
      me { id }
    }
    fragment ImageFields on Image { id groupId owner caption title status imageUrl processedImageUrl
      predictions { label probability } modelVersion error createdAt processedAt }"""
    got = api.gql(deep_wide, {"id": group["id"]})
    assert got["group"]["images"]["edges"][0]["node"]["caption"] == "Tom"
    # the web page's poll: one aliased image(id) per watched image, all through one fragment
    poll = ("query Poll(" + ", ".join(f"$i{n}: ID!" for n in range(30)) + ") { "
            + " ".join(f"a{n}: image(id: $i{n}) {{ ...ImageFields }}" for n in range(30))
            + " } fragment ImageFields on Image { id status title error processedImageUrl }")
    polled = api.gql(poll, {f"i{n}": image["id"] for n in range(30)})
    assert polled["a29"]["id"] == image["id"]
    # GraphiQL's introspection query
    assert api.gql(get_introspection_query(descriptions=True))["__schema"]["queryType"]["name"] == "Query"


def test_repeated_fields_are_limited(api):
    """graphql-core compares every pair of same-named fields at one place (OverlappingFieldsCanBeMerged):
    `{ me { id } me { id } ... }` x 400, 1600 tokens and cost 800, took 3.5 s to validate."""
    many = repeated_field(400)
    errors = _errors(api.post(many))
    assert errors[0]["extensions"] == {"code": "QUERY_TOO_COMPLEX"}
    # 400 * 399 / 2 pairs of `me`, and as many of the `id`s under them (one response path: me.id)
    assert "159600 pairs to compare" in errors[0]["message"]
    # ... and under the limit it is answered (the fields merge into one)
    few = repeated_field(20)
    assert api.post(few).json() == {"data": {"me": None}}


def test_aliases_in_fragments_count_once_per_spread(api):
    """As Strawberry's MaxAliasesLimiter counted them: a fragment's aliases at every spread."""
    half = api.settings.max_query_aliases // 2 + 1
    fragment = "fragment A on Query { " + " ".join(f"a{i}: me {{ id }}" for i in range(half)) + " }"
    errors = _errors(api.post("{ ...A ... on Query { ...A } } " + fragment))
    assert errors[0]["message"] == f"{2 * half} aliases found. Allowed: {api.settings.max_query_aliases}"
    assert "errors" not in api.post("{ ...A } " + fragment).json()


@pytest.mark.parametrize("refused", [False, True])
def test_depth_counts_through_fragments(aws_settings, refused):
    from starlette.testclient import TestClient

    from graphql_api.app import create_app

    settings = aws_settings.model_copy(update={"max_query_depth": 4})
    # groups=0 edges=1 node=2 images=3 pageInfo=4 hasNextPage=5, the last three inside fragments
    inner = "images { pageInfo { hasNextPage } }" if refused else "images { __typename }"
    query = ("{ groups { edges { ...E } } } fragment E on GroupEdge { node { ...N } } "
             "fragment N on Group { " + inner + " }")
    with TestClient(create_app(settings)) as client:
        body = client.post("/graphql", json={"query": query}).json()
    if refused:
        assert body["errors"][0]["message"] == "'anonymous' exceeds maximum operation depth of 4", body
    else:
        assert "errors" not in body, body
