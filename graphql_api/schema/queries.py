"""Query: public reads."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from graphql_api.schema.errors import UserInputError
from graphql_api.schema.pagination import page
from graphql_api.schema.search import SearchQueries
from graphql_api.schema.types import Group, GroupConnection, GroupEdge, Image, PageInfo, User
from udagram import data


def checked_id(value: str, what: str) -> str:
    if not data.is_valid_id(value):
        raise UserInputError(f"{what} id must be 32 lowercase hex characters")
    return value


@strawberry.type
class Query(SearchQueries):  # searchImages, labels
    @strawberry.field(description="All groups, newest first.")
    async def groups(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> GroupConnection:
        items, has_next = await page(info, data.page_groups, first=first, after=after)
        for item in items:
            info.context.groups.prime(item.id, item)
        edges = [GroupEdge(node=Group.from_model(m), cursor=m.created_key) for m in items]
        return GroupConnection(
            edges=edges, page_info=PageInfo(has_next_page=has_next, end_cursor=edges[-1].cursor if edges else None)
        )

    @strawberry.field(description="A group by id; null if there is none.")
    async def group(self, info: Info, id: strawberry.ID) -> Group | None:
        model = await info.context.groups.load(checked_id(id, "group"))
        return Group.from_model(model) if model else None

    @strawberry.field(description="An image by id; null if there is none.")
    async def image(self, info: Info, id: strawberry.ID) -> Image | None:
        model = await info.context.images.load(checked_id(id, "image"))
        return Image.from_model(model) if model else None

    @strawberry.field(description="The signed-in user; null when anonymous or the token is refused.")
    def me(self, info: Info) -> User | None:
        user = info.context.user
        return User(id=strawberry.ID(user.id), roles=list(user.roles)) if user else None
