"""Subscription: live updates over graphql-transport-ws on /graphql (graphql_api/live.py).

Images are public, so these need no sign-in. Each starts with the current state (an image, or
a group's unfinished images), then sends every change; a slow client gets the newest state of
each image, not every step in between.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import strawberry
from strawberry.types import Info

from graphql_api.live import GONE, Mailbox, TooManySubscriptions
from graphql_api.schema.errors import UserInputError
from graphql_api.schema.queries import checked_id
from graphql_api.schema.types import Image

if TYPE_CHECKING:
    from graphql_api.context import Context


@asynccontextmanager
async def watching(info: Info, kind: str, item_id: str) -> AsyncIterator[Mailbox]:
    context: Context = info.context
    try:
        async with context.app.watcher.watch(kind, item_id) as mailbox:
            yield mailbox
    except TooManySubscriptions as exc:
        raise UserInputError(str(exc)) from None


@strawberry.type(description="A change to one of a group's images; `image` is null once it was deleted.")
class GroupImageUpdate:
    id: strawberry.ID
    image: Image | None


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="An image now, then each time it changes; null (and the end) once it is deleted or unknown."
    )
    async def image_updated(self, info: Info, id: strawberry.ID) -> AsyncGenerator[Image | None, None]:
        async with watching(info, "image", checked_id(id, "image")) as mailbox:
            while True:
                for _, record in await mailbox.take():
                    yield Image.from_model(record) if record is not None else None
                    if record is None:
                        return

    @strawberry.subscription(
        description="A group's unfinished images now, then every image added to the group, changed or "
        "deleted (among its newest `live_group_window`); ends when the group is deleted."
    )
    async def group_images_updated(
        self, info: Info, group_id: strawberry.ID
    ) -> AsyncGenerator[GroupImageUpdate, None]:
        async with watching(info, "group", checked_id(group_id, "group")) as mailbox:
            while True:
                for image_id, record in await mailbox.take():
                    if record is GONE:
                        return
                    yield GroupImageUpdate(
                        id=strawberry.ID(image_id), image=Image.from_model(record) if record is not None else None
                    )
