"""The built-in OpenID provider through the API app (TestClient) over DynamoDB on the moto server:
Authorization Code + PKCE with a password, tokens the API accepts, refresh rotation, sign-out,
brute-force limits, and what it refuses."""

from __future__ import annotations

import jwt
import pytest
from authlib.oidc.discovery import OpenIDProviderMetadata
from starlette.testclient import TestClient

from graphql_api import accounts
from graphql_api.app import create_app
from tests.graphql_api.oidc_flow import (
    PASSWORD,
    Authorization,
    code_for,
    form_error,
    redeem,
    redirect_params,
    refresh,
    sign_in,
    tokens_for,
)

ME = "{ me { id roles } }"


def client_for(settings, address: str = "203.0.113.7") -> TestClient:
    # base_url = public_url: loopback http, which the provider accepts (anything else must be https)
    return TestClient(create_app(settings), base_url=settings.public_url, client=(address, 50000))


@pytest.fixture
def idp(aws_settings):
    accounts.add_user("alice", PASSWORD)  # the first account: admin
    accounts.add_user("bob", PASSWORD)
    with client_for(aws_settings) as client:
        yield client


def gql(client, query: str, token: str) -> dict:
    response = client.post("/graphql", json={"query": query}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and not response.json().get("errors"), response.text
    return response.json()["data"]


def test_discovery_document_is_valid_and_points_at_the_api(idp, aws_settings):
    metadata = idp.get("/.well-known/openid-configuration").json()
    OpenIDProviderMetadata(metadata).validate()
    assert metadata["issuer"] == aws_settings.auth_issuer == f"{aws_settings.public_url}/"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["token_endpoint_auth_methods_supported"] == ["none"]
    keys = idp.get(metadata["jwks_uri"].removeprefix(aws_settings.public_url)).json()["keys"]
    assert keys and all("d" not in key for key in keys)  # public halves only


def test_auth_config_tells_the_page_where_to_sign_in(idp, aws_settings):
    assert idp.get("/auth/config").json() == {
        "issuer": aws_settings.auth_issuer, "clientId": "udagram-web", "audience": "udagram",
        "scopes": "openid profile offline_access", "signupEnabled": False}


def test_password_sign_in_with_pkce_gives_tokens_the_api_accepts(idp, aws_settings):
    authorization = Authorization(aws_settings)
    form = idp.get("/auth/authorize", params=authorization.params())
    assert form.status_code == 200 and 'type="password"' in form.text
    assert "<script" not in form.text  # a strict CSP: no script at all
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"]

    values = redirect_params(sign_in(idp, authorization, "alice", PASSWORD))
    assert values["state"] == authorization.state
    response = redeem(idp, authorization, values["code"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == aws_settings.auth_access_token_ttl_seconds
    assert tokens["refresh_token"] and tokens["id_token"]

    # the access token: RS256, our issuer and audience, the first account is an admin
    assert gql(idp, ME, tokens["access_token"])["me"] == {"id": "alice", "roles": ["admin"]}
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "RS256"
    # the ID token: for the page (aud = its client id), with the nonce it sent and the session id
    jwks = idp.get("/.well-known/jwks.json").json()
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == jwt.get_unverified_header(tokens["id_token"])["kid"]))
    id_token = jwt.decode(tokens["id_token"], key.key, algorithms=["RS256"], audience="udagram-web",
                          issuer=aws_settings.auth_issuer)
    assert id_token["sub"] == "alice" and id_token["nonce"] == authorization.nonce and id_token["sid"]

    # a later account is not an admin; it writes as itself
    bob = tokens_for(idp, aws_settings, "bob")["access_token"]
    assert gql(idp, ME, bob)["me"] == {"id": "bob", "roles": []}
    created = gql(idp, 'mutation { createGroup(input: {name: "Bob\'s"}) { ... on Group { owner } } }', bob)
    assert created["createGroup"] == {"owner": "bob"}


def test_a_code_without_its_verifier_is_refused(idp, aws_settings):
    authorization = Authorization(aws_settings)
    code = code_for(idp, authorization, "alice")
    missing = redeem(idp, authorization, code, verifier=None)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant", missing.text
    wrong = redeem(idp, authorization, code, verifier=Authorization(aws_settings).verifier)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant", wrong.text
    # the refusals were about the verifier: with it, the very same code works (once)
    assert redeem(idp, authorization, code).status_code == 200


def test_pkce_is_required_and_plain_is_refused(idp, aws_settings):
    authorization = Authorization(aws_settings)
    for overrides, reason in (({"code_challenge": None, "code_challenge_method": None}, "PKCE is required"),
                              ({"code_challenge_method": None}, "must be S256"),
                              ({"code_challenge": authorization.verifier, "code_challenge_method": "plain"},
                               "must be S256")):
        for response in (idp.get("/auth/authorize", params=authorization.params(**overrides), follow_redirects=False),
                         sign_in(idp, authorization, "alice", PASSWORD, **overrides)):
            values = redirect_params(response)  # the error goes back to the page, with its state
            assert values["error"] == "invalid_request" and reason in values["error_description"], values
            assert values["state"] == authorization.state and "code" not in values


def test_a_code_works_once_and_its_reuse_ends_the_sign_in(idp, aws_settings):
    authorization = Authorization(aws_settings)
    code = code_for(idp, authorization, "alice")
    first = redeem(idp, authorization, code)
    assert first.status_code == 200
    again = redeem(idp, authorization, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # RFC 6749 4.1.2: what the code gave is revoked too
    assert refresh(idp, aws_settings, first.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_code_is_bound_to_its_redirect_uri_and_expires(idp, aws_settings):
    authorization = Authorization(aws_settings)
    code = code_for(idp, authorization, "alice")
    other_uri = redeem(idp, authorization, code, redirect_uri="http://localhost:8000/")
    assert other_uri.json()["error"] == "invalid_grant"
    expired_settings = aws_settings.model_copy(update={"auth_code_ttl_seconds": -1})
    with client_for(expired_settings) as client:
        late = Authorization(expired_settings)
        assert redeem(client, late, code_for(client, late, "alice")).json()["error"] == "invalid_grant"


def test_wrong_password_and_unknown_user_get_the_same_answer(idp, aws_settings):
    authorization = Authorization(aws_settings)
    wrong = sign_in(idp, authorization, "alice", "not her password at all")
    unknown = sign_in(idp, authorization, "nobody", PASSWORD)
    invalid = sign_in(idp, authorization, "<script>", PASSWORD)
    for response in (wrong, unknown, invalid):
        assert response.status_code == 401 and "location" not in response.headers
        assert form_error(response) == "Wrong user name or password."
    assert "&lt;script&gt;" in invalid.text and "<script>" not in invalid.text  # echoed, escaped


def assert_limited(response) -> None:
    assert response.status_code == 429 and "Too many failed sign-ins" in form_error(response)


def test_failed_sign_ins_are_limited_per_account(aws_settings):
    settings = aws_settings.model_copy(update={"signin_max_failures_per_account": 3})
    accounts.add_user("alice", PASSWORD)
    with client_for(settings, "198.51.100.1") as attacker, client_for(settings, "198.51.100.2") as alice:
        authorization = Authorization(settings)
        for _ in range(3):
            assert sign_in(attacker, authorization, "alice", "guess guess guess").status_code == 401
        # the account is locked for a while, from every address, even with the right password
        for client in (attacker, alice):
            assert_limited(sign_in(client, authorization, "alice", PASSWORD))
        # another account is not
        accounts.add_user("bob", PASSWORD)
        assert redirect_params(sign_in(attacker, authorization, "bob", PASSWORD))["code"]


def test_failed_sign_ins_are_limited_per_address(aws_settings):
    settings = aws_settings.model_copy(update={"signin_max_failures_per_address": 4})
    accounts.add_user("alice", PASSWORD)
    with client_for(settings, "198.51.100.9") as sprayer, client_for(settings, "198.51.100.10") as alice:
        authorization = Authorization(settings)
        for name in ("carol", "dave", "erin", "frank"):  # one guess each at many names
            assert sign_in(sprayer, authorization, name, "Summer2024!").status_code == 401
        assert_limited(sign_in(sprayer, authorization, "alice", PASSWORD))
        assert redirect_params(sign_in(alice, authorization, "alice", PASSWORD))["code"]  # others are not


def test_refresh_tokens_rotate_and_a_replayed_one_ends_the_sign_in(idp, aws_settings):
    first = tokens_for(idp, aws_settings, "alice")
    second = refresh(idp, aws_settings, first["refresh_token"])
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert gql(idp, ME, second["access_token"])["me"]["id"] == "alice"
    third = refresh(idp, aws_settings, second["refresh_token"]).json()
    # the first one again (a stolen copy): refused, and the whole sign-in with it
    replay = refresh(idp, aws_settings, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert refresh(idp, aws_settings, third["refresh_token"]).json()["error"] == "invalid_grant"
    # another sign-in of the same user is unaffected
    other = tokens_for(idp, aws_settings, "alice")
    assert refresh(idp, aws_settings, other["refresh_token"]).status_code == 200


def test_sign_out_ends_the_session(idp, aws_settings):
    tokens = tokens_for(idp, aws_settings, "alice")
    page = f"{aws_settings.public_url}/"
    response = idp.get("/auth/logout", params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": page,
                                               "state": "s1"}, follow_redirects=False)
    assert response.status_code == 302 and response.headers["location"] == f"{page}?state=s1"
    assert refresh(idp, aws_settings, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    # not to another site
    other = tokens_for(idp, aws_settings, "alice")
    elsewhere = idp.get("/auth/logout", params={"id_token_hint": other["id_token"],
                                                "post_logout_redirect_uri": "https://evil.example/"},
                        follow_redirects=False)
    assert "evil.example" not in elsewhere.headers.get("location", "")


def test_revoking_a_refresh_token_ends_the_session(idp, aws_settings):
    tokens = tokens_for(idp, aws_settings, "alice")
    response = idp.post("/auth/revoke", data={"token": tokens["refresh_token"], "client_id": "udagram-web"})
    assert response.status_code == 200
    assert refresh(idp, aws_settings, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_removed_account_cannot_renew(idp, aws_settings):
    tokens = tokens_for(idp, aws_settings, "bob")
    accounts.remove_user("bob")
    assert refresh(idp, aws_settings, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    authorization = Authorization(aws_settings)
    assert sign_in(idp, authorization, "bob", PASSWORD).status_code == 401


def test_userinfo(idp, aws_settings):
    tokens = tokens_for(idp, aws_settings, "alice")
    info = idp.get("/auth/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.json() == {"sub": "alice", "name": "alice", "preferred_username": "alice", "roles": ["admin"]}
    assert idp.get("/auth/userinfo", headers={"Authorization": "Bearer garbage"}).status_code == 401


def test_bad_authorization_requests_are_not_redirected(idp, aws_settings):
    """Unknown client or redirect URI: an error page, never a redirect (an open redirector)."""
    authorization = Authorization(aws_settings)
    for overrides in ({"client_id": "someone-else"}, {"redirect_uri": "https://evil.example/"}, {"client_id": None}):
        for response in (idp.get("/auth/authorize", params=authorization.params(**overrides), follow_redirects=False),
                         sign_in(idp, authorization, "alice", PASSWORD, **overrides)):
            assert response.status_code == 400 and "location" not in response.headers
            assert "This sign-in link is not valid" in form_error(response)
            assert 'type="password"' not in response.text


def test_the_form_refuses_posts_from_other_sites(idp, aws_settings):
    authorization = Authorization(aws_settings)
    response = idp.post("/auth/authorize", params=authorization.params(), follow_redirects=False,
                        data={"username": "alice", "password": PASSWORD}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and "location" not in response.headers


def test_sign_up_is_off_by_default_and_makes_ordinary_accounts_when_on(idp, aws_settings):
    authorization = Authorization(aws_settings)
    form = {"intent": "sign-up", "username": "newcomer", "password": PASSWORD, "password_again": PASSWORD}
    off = idp.post("/auth/authorize", params=authorization.params(), data=form, follow_redirects=False)
    assert off.status_code == 401 and accounts.get_user("newcomer") is None
    assert 'data-testid="sign-up-form"' not in idp.get("/auth/authorize", params=authorization.params()).text

    settings = aws_settings.model_copy(update={"auth_signup_enabled": True})
    with client_for(settings) as client:
        assert client.get("/auth/config").json()["signupEnabled"] is True
        assert 'data-testid="sign-up-form"' in client.get("/auth/authorize", params=authorization.params()).text
        weak = client.post("/auth/authorize", params=authorization.params(), follow_redirects=False,
                           data=form | {"password": "short", "password_again": "short"})
        assert weak.status_code == 400 and "too short" in form_error(weak)
        code = redirect_params(client.post("/auth/authorize", params=authorization.params(), data=form,
                                           follow_redirects=False))["code"]
        tokens = redeem(client, authorization, code).json()
        assert gql(client, ME, tokens["access_token"])["me"] == {"id": "newcomer", "roles": []}
        taken = client.post("/auth/authorize", params=authorization.params(), data=form, follow_redirects=False)
        assert taken.status_code == 400 and "already an account" in form_error(taken)


def test_the_password_less_sign_in_is_gone(idp):
    assert idp.post("/auth/local/token", json={"user": "alice"}).status_code in (404, 405)


def test_a_non_loopback_http_address_is_refused(aws_settings, monkeypatch):
    """Passwords and tokens must not cross a network in clear: https, or loopback."""
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)  # set by pytest-iam's Canaille
    settings = aws_settings.model_copy(update={"public_url": "http://photos.example:8000",
                                               "auth_issuer": "http://photos.example:8000/",
                                               "allowed_hosts": ["testserver", "photos.example"]})
    with TestClient(create_app(settings), base_url="http://photos.example:8000") as client:
        response = client.get("/auth/authorize", params=Authorization(settings).params())
        assert response.status_code == 400 and response.json()["error"] == "insecure_transport"
