"""The API's Starlette app: /graphql, /healthz, /auth/config (where the web page signs in), in
local mode GraphiQL and the built-in OpenID provider (graphql_api/oidc_provider.py); the web page's
static files at /. The process's Prometheus metrics are served on their own listener
(`start_metrics_server`), not by this public app."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.asgi import GraphQL

from graphql_api import auth, oidc_provider
from graphql_api.context import AppState, build_context
from graphql_api.schema import build_schema
from graphql_api.security_headers import SecurityHeaders, graphiql_policy, origin, page_policy
from graphql_api.storage import Storage
from udagram import data
from udagram.settings import Settings, get_settings

STATIC_DIR = Path(__file__).parent / "static"


class BodySizeLimit:
    """Refuses request bodies over `max_bytes` with 413 and a JSON error, before anything parses them.

    Checks the declared Content-Length and also counts what actually arrives (chunked bodies).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = True
            if too_big:
                await self._refuse(scope, receive, send)
                return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"error": f"request body too large: the limit is {self.max_bytes} bytes"}, status_code=413
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class GraphQLApp(GraphQL):
    def __init__(self, state: AppState, **kwargs: Any) -> None:
        super().__init__(build_schema(state.settings), **kwargs)
        self.state = state

    async def get_context(self, request, response):  # type: ignore[override]
        return await build_context(self.state, request, response)


def local_hosts(settings: Settings) -> list[str]:
    """The Host names the local API answers to (anything else: 400)."""
    hosts = {urlsplit(settings.public_url).hostname, settings.host, "localhost", "127.0.0.1", *settings.allowed_hosts}
    return sorted(h for h in hosts if h)


def start_metrics_server(settings: Settings) -> WSGIServer:
    """This process's Prometheus metrics (e.g. DynamoDB calls per operation, udagram/data.py) at
    http://api_metrics_host:api_metrics_port/metrics, loopback by default: counters are for the
    operator, not for anyone who can reach the public API. Returns the server (to shut it down)."""
    server, _thread = start_http_server(settings.api_metrics_port, addr=settings.api_metrics_host)
    return server


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    data.configure(settings)
    local = settings.mode == "local"
    state = AppState(settings=settings, verifier=auth.TokenVerifier(settings), storage=Storage(settings))
    graphql = GraphQLApp(
        state,
        graphql_ide="graphiql" if local else None,
        allow_queries_via_get=False,  # every operation is a POST: one path, under the body cap
    )

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def auth_config(request: Request) -> JSONResponse:
        """What the web page needs to sign in: the issuer (discovery), its client id, the audience
        (Auth0 issues a JWT access token only when the authorize request names it) and the scopes."""
        config = {"issuer": settings.auth_issuer, "clientId": settings.auth_client_id,
                  "audience": settings.auth_audience, "scopes": settings.auth_scopes}
        if settings.builtin_idp:
            config["signupEnabled"] = settings.auth_signup_enabled
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/graphql", graphql, methods=["GET", "POST"]),
        Route("/auth/config", auth_config, methods=["GET"]),
    ]
    if settings.builtin_idp:
        routes += oidc_provider.routes(settings, state.verifier)
    if not STATIC_DIR.is_dir():
        STATIC_DIR.mkdir(parents=True, exist_ok=True)
    if not (STATIC_DIR / "index.html").exists():
        (STATIC_DIR / "index.html").write_text("<!doctype html><title>Udagram</title><p>Udagram API</p>\n")
    routes.append(Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static"))

    middleware = [Middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)]
    if local:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=local_hosts(settings)))
    # Outermost, so the host and body-size refusals carry the headers too (docs/web.md).
    graphiql = {"/graphql": graphiql_policy(graphql.graphql_ide_html)} if local else {}
    sign_in = [origin(settings.auth_issuer), *map(origin, settings.auth_connect_origins)]
    middleware.insert(0, Middleware(SecurityHeaders, policy=page_policy(state.storage, sign_in), html_policies=graphiql))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.udagram = state
    return app
