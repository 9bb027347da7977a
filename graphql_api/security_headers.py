"""Security headers on every response of the API app.

The web page gets a strict Content-Security-Policy: scripts and styles only from the API's own
origin (no inline script or style), pictures also from the S3 endpoints that presigned URLs point
at (plus data: for the favicon and blob: for the local preview of an upload), connections only to
the API (and its websocket, ws:/wss:), the presigned POST's endpoint and the sign-in issuer, no
framing, no <base>, no plugins. The S3 origins are read off real presigned URLs at startup: boto3
writes path-style URLs for an explicit endpoint or a bucket name with dots and virtual-hosted ones
(bucket.s3.amazonaws.com, not the regional name) otherwise, and a wrong guess would silently hide
every picture.

GraphiQL (local mode: the HTML answer at /graphql) is Strawberry's page with an inline script and
React/GraphiQL from unpkg.com; it gets its own policy, the inline script allowed by its hash.

By hand rather than with the `secure` package: the header values are fixed strings; what needs code
is deriving the S3 origins and choosing GraphiQL's policy per response, which it would not do.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphql_api.storage import Storage

GRAPHIQL_CDN = "https://unpkg.com"  # where Strawberry's GraphiQL page loads React and GraphiQL from
_PROBE_KEY = "security-headers-probe"  # only presigned (a local computation), never uploaded
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Nothing needs a Referer (CORS uses Origin): S3 and unpkg.com are not told the page's address.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors 'none' for browsers without CSP 2
    "Cross-Origin-Opener-Policy": "same-origin",
}


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def storage_origins(storage: Storage) -> tuple[list[str], list[str]]:
    """(origins of presigned picture URLs, origins of presigned upload POSTs), from real ones."""
    settings = storage.settings
    pictures = {origin(storage.download_url(bucket, _PROBE_KEY))
                for bucket in (settings.originals_bucket, settings.processed_bucket)}
    uploads = {origin(storage.presigned_upload(_PROBE_KEY, "image/jpeg", 1).url)}
    return sorted(pictures), sorted(uploads)


def _policy(**directives: Iterable[str]) -> str:
    common = {"frame-ancestors": ["'none'"], "base-uri": ["'none'"], "form-action": ["'self'"],
              "object-src": ["'none'"]}
    merged = {"default-src": ["'self'"], **{k.replace("_", "-"): v for k, v in directives.items()}, **common}
    return "; ".join(" ".join([name, *sources]) for name, sources in merged.items())


def websocket_origins(page_origins: Iterable[str]) -> list[str]:
    """ws://host for an http:// page, wss://host for an https:// one."""
    return [origin.replace("http", "ws", 1) for origin in page_origins]


def page_policy(storage: Storage, page_origins: Iterable[str] = (), sign_in_origins: Iterable[str] = ()) -> str:
    """`page_origins`: where the page runs (its websocket goes back there, ws:/wss:);
    `sign_in_origins`: where the page's OpenID client fetches the issuer's discovery document
    and tokens (the issuer's origin, and e.g. Cognito's separate token endpoint domain)."""
    pictures, uploads = storage_origins(storage)
    return _policy(
        script_src=["'self'"],
        style_src=["'self'"],
        img_src=["'self'", *pictures, "data:", "blob:"],
        connect_src=["'self'", *websocket_origins(page_origins), *uploads, *sorted(set(sign_in_origins))],
    )


def _script_hash(script: str) -> str:
    text = script.replace("\r\n", "\n").replace("\r", "\n")  # as the HTML parser hands it over
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def graphiql_policy(html: str) -> str:
    """GraphiQL's page as Strawberry serves it: its inline scripts by hash, the CDN's scripts and
    styles, inline styles (its editors set them), and requests to the API only."""
    return _policy(
        script_src=[*map(_script_hash, _INLINE_SCRIPT.findall(html)), GRAPHIQL_CDN],
        style_src=["'self'", "'unsafe-inline'", GRAPHIQL_CDN],
        img_src=["'self'", "data:"],
        font_src=["'self'", "data:", GRAPHIQL_CDN],
        connect_src=["'self'"],
    )


class SecurityHeaders:
    """Adds HEADERS and `policy` as Content-Security-Policy to every HTTP response (headers a
    route set itself are kept); an HTML answer at a path of `html_policies` gets that policy."""

    def __init__(self, app: ASGIApp, policy: str, html_policies: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.headers = {**HEADERS, "Content-Security-Policy": policy}
        self.html_policies = dict(html_policies or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        html_policy = self.html_policies.get(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                values = self.headers
                if html_policy and headers.get("content-type", "").startswith("text/html"):
                    values = {**values, "Content-Security-Policy": html_policy}
                for name, value in values.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
