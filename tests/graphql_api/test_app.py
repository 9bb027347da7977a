"""The Starlette app around the schema: limits, masking, health, sign-in configuration, JWKS, static files."""

from __future__ import annotations

import jwt
import pytest
from starlette.testclient import TestClient

from graphql_api import auth
from graphql_api.app import create_app
from tests.fixtures.aws import moto_settings
from udagram import data


def _errors(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [e["message"] for e in response.json()["errors"]]


def test_query_depth_is_limited(aws_settings):
    # The schema has no cycles (its deepest path is 8 levels), so check the limiter with a low limit.
    settings = aws_settings.model_copy(update={"max_query_depth": 4})
    with TestClient(create_app(settings)) as test_client:
        def post(query):
            return test_client.post("/graphql", json={"query": query})

        assert post("{ groups { edges { node { id } } } }").json().get("errors") is None  # depth 4
        messages = _errors(post("{ groups { edges { node { images { pageInfo { hasNextPage } } } } } }"))
        assert any("exceeds maximum operation depth of 4" in m for m in messages), messages


def test_aliases_are_limited(api):
    many = "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(api.settings.max_query_aliases + 1)) + " }"
    messages = _errors(api.post(many))
    assert any("aliases found" in m for m in messages), messages
    ok = "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(api.settings.max_query_aliases)) + " }"
    assert api.post(ok).json().get("errors") is None


def test_tokens_are_limited(api):
    huge = "{ " + "me { id } " * (api.settings.max_query_tokens // 4 + 10) + "}"
    assert len(huge.encode()) < api.settings.max_request_bytes  # under the body cap: the token limit acts
    messages = _errors(api.post(huge))
    assert any(f"more than {api.settings.max_query_tokens} tokens" in m for m in messages)


def test_request_body_is_capped(api):
    big = "{ me { id } }" + " " * (api.settings.max_request_bytes + 1)
    response = api.client.post("/graphql", json={"query": big})
    assert response.status_code == 413
    assert response.json() == {"error": f"request body too large: the limit is {api.settings.max_request_bytes} bytes"}


def test_chunked_body_without_length_is_capped_too(api):
    def chunks():
        for _ in range(api.settings.max_request_bytes // 1000 + 2):
            yield b" " * 1000

    response = api.client.post("/graphql", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_unexpected_errors_are_masked(api, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(data, "page_groups", broken)
    body = api.post("{ groups { edges { node { id } } } }").json()
    assert body["errors"][0]["message"] == "Unexpected error."
    assert "secret" not in str(body)


def test_syntax_errors_are_shown(api):
    assert "Syntax Error" in _errors(api.post("{ groups {"))[0]


def test_healthz_and_static_page(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    page = api.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_graphiql_in_local_mode(api):
    response = api.client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200 and "graphiql" in response.text.lower()


def test_jwks_serves_the_key_tokens_are_signed_with(api):
    jwks = api.client.get("/.well-known/jwks.json").json()
    token = api.token("bob")
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks["keys"] if k["kid"] == kid)
    assert "d" not in key  # public half only
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["RS256"], audience=api.settings.auth_audience)
    assert claims["sub"] == "bob" and claims["iss"] == api.settings.auth_issuer


def test_aws_mode_has_no_local_issuer_and_no_graphiql(moto_server, tmp_path):
    settings = moto_settings(moto_server, tmp_path, mode="aws", auth_issuer="https://tenant.example/",
                             auth_audience="https://udagram.example/api", auth_client_id="spa-client-id")
    with TestClient(create_app(settings)) as test_client:
        for path in ("/.well-known/jwks.json", "/.well-known/openid-configuration", "/auth/authorize"):
            assert test_client.get(path).status_code == 404, path
        assert test_client.post("/auth/token", data={"grant_type": "refresh_token"}).status_code in (404, 405)
        graphiql = test_client.get("/graphql", headers={"Accept": "text/html"})
        assert "graphiql" not in graphiql.text.lower()
        # the page signs in at the configured issuer, asking for the API's audience
        assert test_client.get("/auth/config").json() == {
            "issuer": "https://tenant.example/", "clientId": "spa-client-id",
            "audience": "https://udagram.example/api", "scopes": "openid profile offline_access"}
    with pytest.raises(RuntimeError):
        auth.issue_token("alice", settings)


def test_local_api_answers_only_its_own_host_names(aws_settings):
    """A DNS-rebinding page (evil.example re-resolved to 127.0.0.1) must not reach the local API or
    its sign-in."""
    with TestClient(create_app(aws_settings)) as test_client:
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
            for path in ("/auth/config", "/.well-known/openid-configuration", "/auth/authorize"):
                refused = test_client.get(path, headers={"Host": host})
                assert refused.status_code == 400, (host, path, refused.text)
        for host in ("127.0.0.1:8000", "localhost", "testserver"):
            answered = test_client.get("/.well-known/openid-configuration", headers={"Host": host})
            assert answered.status_code == 200 and answered.json().get("issuer"), (host, answered.text)


def test_aws_mode_has_no_host_list(aws_settings):
    """Behind a load balancer, health checks come with the instance's address as Host."""
    settings = aws_settings.model_copy(update={"mode": "aws", "auth_issuer": "https://idp.example/"})
    with TestClient(create_app(settings)) as test_client:
        assert test_client.get("/healthz", headers={"Host": "10.0.3.7:8000"}).status_code == 200
