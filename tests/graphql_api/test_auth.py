"""Token verification: every forged-token case refused, local issuing, a remote (Auth0-like) issuer."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from graphql_api import auth
from tests.graphql_api.conftest import CREATE_GROUP
from tests.graphql_api.tokens import FORGED, forged
from udagram.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(mode="local", data_dir=tmp_path, api_port=8765)


def test_issued_token_verifies_and_key_file_is_private(settings):
    token = auth.issue_token("alice", settings)
    assert auth.TokenVerifier(settings).verify(token) == auth.User(id="alice")
    mode = stat.S_IMODE(os.stat(settings.local_signing_key_path).st_mode)
    assert mode == 0o600
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"] == auth.local_jwks(settings)["keys"][0]["kid"]
    # the key survives: a second verifier (a restarted API) accepts the same token
    assert auth.TokenVerifier(settings).verify(token).id == "alice"


# A process that creates the signing key, paused for 3 s once its key file is open (its marker
# file says so), as a slow API process would be when two start at once on a fresh data dir.
SLOW_KEY_CREATOR = """
import os, sys, time
from pathlib import Path
from graphql_api import auth
from udagram.settings import Settings
real_fdopen = os.fdopen
def slow_fdopen(*args, **kwargs):
    Path(sys.argv[2]).touch()
    time.sleep(3)
    return real_fdopen(*args, **kwargs)
os.fdopen = slow_fdopen
print(auth.local_key(Settings(mode="local", data_dir=sys.argv[1])).kid)
"""


def test_two_processes_creating_the_signing_key_at_once_agree_on_one_key(tmp_path):
    """Two API processes starting at once on a fresh data dir: the second must never read the
    first one's key file half-written, and both must sign with the same key."""
    marker = tmp_path / "first-has-its-file-open"
    first = subprocess.Popen([sys.executable, "-c", SLOW_KEY_CREATOR, str(tmp_path), str(marker)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second_kid = auth.local_key(Settings(mode="local", data_dir=tmp_path)).kid
        first_kid, errors = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, errors
    assert first_kid.strip() == second_kid
    assert stat.S_IMODE(os.stat(tmp_path / "auth" / "local-signing-key.pem").st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "auth").iterdir()) == ["local-signing-key.pem"]  # no leftovers


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_tokens_are_refused(settings, case):
    verifier = auth.TokenVerifier(settings)
    with pytest.raises(auth.AuthError) as refused:
        verifier.verify(forged(settings, case))
    assert FORGED[case] in str(refused.value)


@pytest.mark.parametrize("user", ["", "a" * 33, "-alice", "al ice", "alice\n", "<script>", "a/b"])
def test_bad_user_names_get_no_token(settings, user):
    with pytest.raises(ValueError):
        auth.issue_token(user, settings)


@pytest.mark.parametrize("case", ["alg none", "HS256 with the public key", "expired", "wrong audience",
                                  "wrong issuer", "unknown kid", "garbage"])
def test_forged_tokens_cannot_write_through_the_api(api, case):
    token = forged(api.settings, case)
    result = api.gql(CREATE_GROUP, {"input": {"name": "pwned"}}, token=token)["createGroup"]
    assert result["__typename"] == "NotAuthenticated"
    assert FORGED[case] in result["message"]
    assert api.gql("{ groups { edges { node { id } } } }")["groups"]["edges"] == []


@pytest.mark.parametrize("case", ["kid a number", "kid a list", "crit header", "crit not a list", "alg a list",
                                  "aud a list without ours", "iss a list", "sub huge", "garbage"])
def test_malformed_tokens_leave_reads_public_and_writes_refused(api, case):
    """Header and claim types a verifier may not foresee: a public read ignores the token and
    answers (it was HTTP 500 for a number or list kid and for crit); a write says why it refused."""
    group = api.create_group("alice", "public")
    token = forged(api.settings, case)
    read = api.post("{ groups { edges { node { id name } } } me { id } }", token=token)
    assert read.status_code == 200, read.text
    assert read.json() == {"data": {"groups": {"edges": [{"node": {"id": group["id"], "name": "public"}}]}, "me": None}}
    result = api.gql(CREATE_GROUP, {"input": {"name": "pwned"}}, token=token)["createGroup"]
    assert result["__typename"] == "NotAuthenticated" and FORGED[case] in result["message"], result


def test_an_unforeseen_verifier_failure_leaves_reads_public(api, monkeypatch):
    def broken(self, token):
        raise KeyError("something PyJWT did not foresee")

    monkeypatch.setattr(auth.TokenVerifier, "verify", broken)
    read = api.post("{ me { id } }", token="x.y.z")
    assert read.status_code == 200 and read.json() == {"data": {"me": None}}
    result = api.gql(CREATE_GROUP, {"input": {"name": "pwned"}}, token="x.y.z")["createGroup"]
    assert result == {"__typename": "NotAuthenticated", "code": "UNAUTHENTICATED",
                      "message": "sign in to do this: the token could not be verified"}


class _IssuerHandler(BaseHTTPRequestHandler):
    """An OpenID provider's two public documents: discovery and the key set."""

    issuer = ""
    documents: dict = {}
    hits: dict = {}

    def do_GET(self):  # noqa: N802
        type(self).hits[self.path] = type(self).hits.get(self.path, 0) + 1
        document = self.documents.get(self.path)
        body = json.dumps(document).encode()
        self.send_response(200 if document is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict:
    return RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
def remote_idp(tmp_path):
    """An Auth0-like identity provider on loopback (discovery document and JWKS) and its private key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = _jwk(key, "idp-key-1")
    handler = type("Handler", (_IssuerHandler,), {"documents": {}, "hits": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    issuer = f"http://127.0.0.1:{server.server_address[1]}/"
    handler.documents = {
        "/.well-known/openid-configuration": {"issuer": issuer, "jwks_uri": f"{issuer}keys/jwks.json"},
        "/keys/jwks.json": {"keys": [jwk]},
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings = Settings(mode="local", data_dir=tmp_path, auth_issuer=issuer, auth_audience="https://udagram.example/api",
                        auth_role_claim="https://udagram.example/roles")
    yield settings, key, handler
    server.shutdown()
    server.server_close()


def test_remote_issuer_keys_come_from_its_discovery_document_and_are_cached(remote_idp):
    settings, key, handler = remote_idp
    verifier = auth.TokenVerifier(settings)
    assert not verifier.self_issued
    claims = {"sub": "auth0|123", "iss": settings.auth_issuer, "aud": [settings.auth_audience, "other"],
              "exp": int(time.time()) + 600, "https://udagram.example/roles": ["admin"]}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "idp-key-1"})
    assert verifier.verify(token) == auth.User(id="auth0|123", roles=("admin",))  # a namespaced role claim
    assert verifier.verify(token).id == "auth0|123"
    # discovery once, then the JWKS it names once: both cached
    assert handler.hits == {"/.well-known/openid-configuration": 1, "/keys/jwks.json": 1}

    with pytest.raises(auth.AuthError, match="unknown key"):
        verifier.verify(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "rotated-away"}))
    with pytest.raises(auth.AuthError, match="wrong audience"):
        verifier.verify(jwt.encode(claims | {"aud": "udagram"}, key, algorithm="RS256", headers={"kid": "idp-key-1"}))
    # a token of the built-in provider (same data dir, its own key) is not trusted for this issuer
    local = Settings(mode="local", data_dir=settings.data_dir)
    with pytest.raises(auth.AuthError):
        verifier.verify(auth.issue_token("alice", local))
    # ... and with this issuer configured, udagram mints no token at all
    with pytest.raises(RuntimeError, match="configured identity provider"):
        auth.issue_token("alice", settings)


def test_a_key_the_issuer_withdraws_is_refused_once_the_cached_key_set_expires(remote_idp):
    """A key the issuer drops from its JWKS (revoked, rotated away) stops verifying tokens when the
    cached set expires; it was trusted until the API restarted. A key it adds is picked up."""
    settings, key, handler = remote_idp
    verifier = auth.TokenVerifier(settings.model_copy(update={"auth_jwks_cache_seconds": 1.0}))
    claims = {"sub": "auth0|123", "iss": settings.auth_issuer, "aud": settings.auth_audience,
              "exp": int(time.time()) + 600}
    withdrawn = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "idp-key-1"})
    assert verifier.verify(withdrawn).id == "auth0|123"
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    handler.documents["/keys/jwks.json"] = {"keys": [_jwk(new_key, "idp-key-2")]}
    time.sleep(1.5)
    with pytest.raises(auth.AuthError, match="unknown key"):
        verifier.verify(withdrawn)
    rotated_in = jwt.encode(claims, new_key, algorithm="RS256", headers={"kid": "idp-key-2"})
    assert verifier.verify(rotated_in).id == "auth0|123"


def test_made_up_key_ids_do_not_make_the_api_refetch_the_key_set_each_time(remote_idp):
    """Tokens with invented kids cost nothing to send: each must not cost the issuer a JWKS request
    (and the API a thread blocked on it). One refetch per cooldown at most."""
    settings, key, handler = remote_idp
    verifier = auth.TokenVerifier(settings)
    claims = {"sub": "auth0|123", "iss": settings.auth_issuer, "aud": settings.auth_audience,
              "exp": int(time.time()) + 600}
    assert verifier.verify(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "idp-key-1"})).id == "auth0|123"
    for attempt in range(20):
        with pytest.raises(auth.AuthError, match="unknown key"):
            verifier.verify(jwt.encode(claims, key, algorithm="RS256", headers={"kid": f"made-up-{attempt}"}))
    assert handler.hits["/keys/jwks.json"] <= 2


def test_a_discovery_document_of_another_issuer_or_none_is_refused_clearly(remote_idp, tmp_path):
    settings, key, handler = remote_idp
    token = jwt.encode({"sub": "x", "iss": settings.auth_issuer, "aud": settings.auth_audience,
                        "exp": int(time.time()) + 600}, key, algorithm="RS256", headers={"kid": "idp-key-1"})
    without_slash = settings.model_copy(update={"auth_issuer": settings.auth_issuer.rstrip("/")})
    with pytest.raises(auth.AuthError, match="must match it exactly"):
        auth.TokenVerifier(without_slash).verify(token)
    unreachable = settings.model_copy(update={"auth_issuer": "http://127.0.0.1:9/"})
    with pytest.raises(auth.AuthError, match="could not fetch the issuer's discovery document"):
        auth.TokenVerifier(unreachable).verify(token)
    # an explicit JWKS URL skips discovery
    direct = settings.model_copy(update={"auth_jwks_url": f"{settings.auth_issuer}keys/jwks.json"})
    handler.hits.clear()
    assert auth.TokenVerifier(direct).verify(token).id == "x"
    assert handler.hits == {"/keys/jwks.json": 1}


def test_cognito_access_tokens_are_matched_by_client_id(remote_idp):
    """Cognito's access tokens carry `client_id` and no `aud`; its groups are `cognito:groups`."""
    settings, key, _ = remote_idp
    cognito = settings.model_copy(update={"auth_audience": "app-client-1", "auth_audience_claim": "client_id",
                                          "auth_role_claim": "cognito:groups"})
    verifier = auth.TokenVerifier(cognito)
    claims = {"sub": "4f1c-uuid", "iss": settings.auth_issuer, "client_id": "app-client-1", "token_use": "access",
              "exp": int(time.time()) + 600, "cognito:groups": ["admin"]}

    def sign(values: dict) -> str:
        return jwt.encode(values, key, algorithm="RS256", headers={"kid": "idp-key-1"})

    assert verifier.verify(sign(claims)) == auth.User(id="4f1c-uuid", roles=("admin",))
    with pytest.raises(auth.AuthError, match="wrong audience"):
        verifier.verify(sign(claims | {"client_id": "another-app"}))
    with pytest.raises(auth.AuthError, match="lacks the 'client_id' claim"):
        verifier.verify(sign({k: v for k, v in claims.items() if k != "client_id"}))
