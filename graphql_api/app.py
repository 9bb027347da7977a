"""The API's Starlette app: /graphql (POST, and websockets speaking graphql-transport-ws for the
subscriptions), /healthz, /auth/config (where the web page signs in), in local mode GraphiQL and
the built-in OpenID provider (graphql_api/oidc_provider.py); the web page's static files at /. The
process's Prometheus metrics are served on their own listener (`start_metrics_server`), not by this
public app. While it runs, each process feeds the admin's bulk jobs (graphql_api/admin/feeder.py)
and, while anyone is subscribed, watches DynamoDB for the subscriptions (graphql_api/live.py)."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from datetime import timedelta
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
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UNSET

from graphql_api import auth, oidc_provider
from graphql_api.admin.feeder import Feeder
from graphql_api.context import AppState, Context, authenticate, build_context
from graphql_api.live import Watcher
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
    """Strawberry's ASGI view. Websockets: graphql-transport-ws only; a handshake whose Origin is
    neither the page's (public_url, or its localhost twin) nor the Host it was sent to is refused
    (403: cross-site WebSocket hijacking); a connection_init whose `authorization` is refused
    closes the socket with 4403."""

    def __init__(self, state: AppState, **kwargs: Any) -> None:
        settings = state.settings
        super().__init__(
            build_schema(settings),
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=timedelta(seconds=10),
            max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
            allowed_origins=settings.page_origins,
            **kwargs,
        )
        self.state = state

    async def get_context(self, request, response):
        return await build_context(self.state, request, response)

    async def on_ws_connect(self, context: Context):  # type: ignore[override]
        authorization = (context.connection_params or {}).get("authorization")
        if authorization is not None:  # none: anonymous, for public data
            context.user, context.auth_error = None, None
            await authenticate(context, authorization)
            if context.user is None:
                raise ConnectionRejectionError({"reason": context.auth_error})
        return UNSET


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


def listen_socket(settings: Settings) -> socket.socket:
    """The API's listening socket on host:api_port. With `api_processes` > 1 the processes share
    the port (SO_REUSEPORT): the kernel spreads new connections over them, and one that dies takes
    only the connections queued on it. Only the same user's processes may join such a port, and a
    lone API process (the default) does not allow it: a second one still fails, address in use."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no obstacle
        if settings.api_processes > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.api_port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError:
        sock.close()
        raise
    return sock


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    data.configure(settings)
    local = settings.mode == "local"
    feeder = Feeder(settings)
    state = AppState(settings=settings, verifier=auth.TokenVerifier(settings), storage=Storage(settings),
                     watcher=Watcher(settings), feeder=feeder)
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
        config: dict[str, Any] = {"issuer": settings.auth_issuer, "clientId": settings.auth_client_id,
                  "audience": settings.auth_audience, "scopes": settings.auth_scopes}
        if settings.builtin_idp:
            config["signupEnabled"] = settings.auth_signup_enabled
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
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
    sign_in = [origin(state.verifier.issuer), *map(origin, settings.auth_connect_origins)]
    middleware.insert(0, Middleware(SecurityHeaders, policy=page_policy(state.storage, settings.page_origins, sign_in),
                                     html_policies=graphiql))

    @asynccontextmanager
    async def lifespan(app: Starlette):
        feeder.start()
        try:
            yield
        finally:
            await feeder.stop()
            await state.watcher.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.udagram = state
    return app
