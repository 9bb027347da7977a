"""Per-request context: the signed-in user (if any), DataLoaders, the app's storage and settings.

Reading is public: a missing or bad token only matters to a write, which then answers a typed
`NotAuthenticated` error whose message says what was wrong with the token.

A websocket (live updates) has one context for the whole connection: its user comes from the
`connection_init` payload `{"authorization": "Bearer <token>"}` (browsers cannot set headers on a
websocket), checked by `GraphQLApp.on_ws_connect`; its DataLoaders batch but do not cache, since
the connection outlives any one answer (presigned URLs expire).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.requests import Request
from strawberry.dataloader import DataLoader

from graphql_api.auth import AuthError, TokenVerifier, User
from graphql_api.live import Watcher
from graphql_api.storage import Storage
from udagram import data
from udagram.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class AppState:
    """What lives as long as the app: settings, the token verifier (JWKS cache), the S3 client."""

    settings: Settings
    verifier: TokenVerifier
    storage: Storage
    watcher: Watcher
    feeder: Any = None  # graphql_api.admin.feeder.Feeder: told when a job starts here


@dataclass
class Context:
    request: Request
    response: Any
    app: AppState
    user: User | None = None
    auth_error: str | None = None  # why a presented token was refused
    connection_params: dict[str, Any] | None = None  # a websocket's connection_init payload
    groups: DataLoader[str, data.GroupModel | None] = field(init=False)
    images: DataLoader[str, data.ImageModel | None] = field(init=False)
    download_urls: DataLoader[tuple[str, str], str] = field(init=False)  # (bucket, key) -> presigned GET

    def __post_init__(self) -> None:
        # One BatchGetItem per tick of the event loop for all ids asked for together (no N+1).
        # A websocket's context lasts as long as the connection: its loaders batch but do not cache.
        cache = self.request.scope["type"] != "websocket"
        self.groups = DataLoader(load_fn=_batch_loader(data.GroupModel), cache=cache)
        self.images = DataLoader(load_fn=_batch_loader(data.ImageModel), cache=cache)
        # SigV4 signing is CPU work (a page of 100 images: 200 signatures): one worker thread per tick.
        self.download_urls = DataLoader(load_fn=self._sign, cache=cache)

    async def _sign(self, objects: list[tuple[str, str]]) -> list[str]:
        return await asyncio.to_thread(self.storage.download_urls, objects)

    async def original_url(self, key: str) -> str:
        return await self.download_urls.load((self.settings.originals_bucket, key))

    async def processed_url(self, key: str) -> str:
        return await self.download_urls.load((self.settings.processed_bucket, key))

    @property
    def settings(self) -> Settings:
        return self.app.settings

    @property
    def storage(self) -> Storage:
        return self.app.storage


def _batch_loader(model):
    async def load(ids: list[str]) -> list[Any]:
        found = await asyncio.to_thread(data.batch_get, model, ids)
        return [found.get(i) for i in ids]

    return load


def bearer_token(header: Any) -> str | None:
    """The token of an `Authorization: Bearer <token>` value; "" for another scheme."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ") if isinstance(header, str) else ("", "", "")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


async def authenticate(context: Context, authorization: Any) -> None:
    """Sets the context's user from an Authorization value, or `auth_error` saying why not."""
    token = bearer_token(authorization)
    if token == "":
        context.auth_error = "the Authorization header must be 'Bearer <token>'"
    elif token is not None:
        verifier = context.app.verifier
        try:
            # A JWKS fetch is blocking I/O: keep it off the event loop.
            if verifier.self_issued:
                context.user = verifier.verify(token)
            else:
                context.user = await asyncio.to_thread(verifier.verify, token)
        except AuthError as exc:
            context.auth_error = str(exc)
        except Exception:  # noqa: BLE001 - a token the verifier did not foresee: reads stay public
            log.exception("token verification failed unexpectedly")
            context.auth_error = "the token could not be verified"


async def build_context(app: AppState, request: Request, response: Any) -> Context:
    context = Context(request=request, response=response, app=app)
    await authenticate(context, request.headers.get("authorization"))
    return context
