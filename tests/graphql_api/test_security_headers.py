"""Security headers on every answer of the API app: a strict Content-Security-Policy for the page
(with the S3 origins its presigned URLs use), GraphiQL's own policy, and the fixed headers."""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

from udagram import data

FIXED = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _directives(policy: str) -> dict[str, list[str]]:
    parsed = [part.split() for part in policy.split(";") if part.strip()]
    return {name: sources for name, *sources in parsed}


def _page_policy(s3: str, ws: str, issuer: str) -> str:
    return (
        f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' {s3} data: blob:; "
        f"connect-src 'self' {ws} {s3} {issuer}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
        "object-src 'none'"
    )


REQUESTS = {
    "page": ("GET", "/", {}, None),
    "stylesheet": ("GET", "/styles.css", {}, None),
    "script module": ("GET", "/js/main.js", {}, None),
    "health": ("GET", "/healthz", {}, None),
    "graphql": ("POST", "/graphql", {}, {"query": "{ groups { edges { node { id } } } }"}),
    "not found": ("GET", "/no-such-file.js", {}, None),
    "body too large": ("POST", "/graphql", {}, {"query": " " * 70_000}),
    "unknown host": ("GET", "/", {"Host": "evil.example"}, None),
}


@pytest.mark.parametrize("what", REQUESTS)
def test_every_answer_carries_the_security_headers(api, what):
    method, path, headers, body = REQUESTS[what]
    response = api.client.request(method, path, headers=headers, json=body)
    expected_status = {"not found": 404, "body too large": 413, "unknown host": 400}.get(what, 200)
    assert response.status_code == expected_status, response.text
    for name, value in FIXED.items():
        assert response.headers.get(name) == value, (name, response.headers)
    # The local S3 (here the moto server) is where presigned pictures and uploads go; the page's
    # websocket (live updates) goes to the API under either of its local names; the sign-in
    # issuer (here the API itself, on public_url's origin) is where tokens come from.
    websockets = "ws://127.0.0.1:8000 ws://localhost:8000"  # (public_url: the default port)
    assert response.headers["content-security-policy"] == _page_policy(
        _origin(api.settings.s3_endpoint_url), websockets, _origin(api.settings.auth_issuer))


def test_the_page_may_reach_a_production_issuer_and_nothing_else(aws_settings):
    from starlette.testclient import TestClient

    from graphql_api.app import create_app

    settings = aws_settings.model_copy(update={
        "mode": "aws", "public_url": "https://photos.example.com",
        "auth_issuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC",
        "auth_connect_origins": ["https://udagram.auth.eu-west-1.amazoncognito.com"]})
    with TestClient(create_app(settings)) as client:
        connect = _directives(client.get("/").headers["content-security-policy"])["connect-src"]
    assert connect == ["'self'", "wss://photos.example.com", _origin(aws_settings.s3_endpoint_url),
                       "https://cognito-idp.eu-west-1.amazonaws.com", "https://udagram.auth.eu-west-1.amazoncognito.com"]


def test_presigned_urls_the_api_hands_out_are_allowed_by_the_policy(api):
    group = api.create_group("alice")
    created = api.create_image("alice", group["id"])
    image_id = created["image"]["id"]
    data.ImageModel.get(image_id).update(actions=[
        data.ImageModel.status.set("DONE"), data.ImageModel.processed_key.set(data.processed_key(image_id)),
    ])
    urls = api.gql("query($id: ID!) { image(id: $id) { imageUrl processedImageUrl } }", {"id": image_id})["image"]
    policy = _directives(api.client.get("/").headers["content-security-policy"])
    assert _origin(urls["imageUrl"]) in policy["img-src"]
    assert _origin(urls["processedImageUrl"]) in policy["img-src"]
    assert _origin(created["upload"]["url"]) in policy["connect-src"]
    assert "'unsafe-inline'" not in policy["script-src"] + policy["style-src"]


class _InlineScripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self._inline = False

    def handle_starttag(self, tag, attrs):
        self._inline = tag == "script" and "src" not in dict(attrs)
        if self._inline:
            self.scripts.append("")

    def handle_data(self, data):
        if self._inline:
            self.scripts[-1] += data

    def handle_endtag(self, tag):
        self._inline = False


def test_graphiql_gets_its_own_policy(api):
    """GraphiQL (local mode) runs an inline script and loads GraphiQL from unpkg.com: its inline
    script is allowed by hash (no 'unsafe-inline' for scripts), framing is still refused."""
    response = api.client.get("/graphql", headers={"Accept": "text/html"})
    assert "graphiql" in response.text.lower()
    parser = _InlineScripts()
    parser.feed(response.text)
    assert parser.scripts, "the GraphiQL page has an inline script"
    hashes = {f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in parser.scripts}
    policy = _directives(response.headers["content-security-policy"])
    assert set(policy["script-src"]) == hashes | {"https://unpkg.com"}
    assert policy["frame-ancestors"] == ["'none'"] and policy["connect-src"] == ["'self'"]
    assert response.headers["x-frame-options"] == "DENY"


def test_storage_origins_follow_the_urls_boto3_writes_on_aws(monkeypatch):
    """On AWS, presigned URLs are virtual-hosted on the global name (bucket.s3.amazonaws.com), not
    the regional one; a bucket name with dots goes path-style on the regional endpoint."""
    from graphql_api.security_headers import storage_origins
    from graphql_api.storage import Storage
    from udagram.settings import Settings

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")

    def origins(originals: str, processed: str):
        settings = Settings(mode="aws", aws_region="eu-west-1", aws_access_key_id="AKIAEXAMPLE",
                            aws_secret_access_key="example", originals_bucket=originals, processed_bucket=processed)
        return storage_origins(Storage(settings))

    assert origins("udagram-originals", "udagram-processed") == (
        ["https://udagram-originals.s3.amazonaws.com", "https://udagram-processed.s3.amazonaws.com"],
        ["https://udagram-originals.s3.amazonaws.com"],
    )
    assert origins("udagram.originals", "udagram.processed") == (
        ["https://s3.eu-west-1.amazonaws.com"], ["https://s3.eu-west-1.amazonaws.com"],
    )
