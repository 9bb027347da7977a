"""Bounded, cursor-based pages (newest first; the cursor is the item's `created_key`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from strawberry.types import Info

from graphql_api.schema.errors import UserInputError
from udagram import data

T = TypeVar("T")


def page_size(info: Info, first: int | None) -> int:
    settings = info.context.settings
    if first is None:
        return settings.page_size_default
    if first < 1 or first > settings.page_size_max:
        raise UserInputError(f"`first` must be between 1 and {settings.page_size_max}")
    return first


async def page(info: Info, query: Callable[..., T], *args: Any, first: int | None, after: str | None) -> T:
    """One page from a `data.page_*` query (a single DynamoDB Query; `labels.search_page`: a bounded
    few), called as `query(*args, limit, after)` off the event loop, with `first` and `after` checked."""
    limit = page_size(info, first)
    if after is not None and not data.is_valid_created_key(after):
        raise UserInputError("`after` is not a cursor this API handed out")
    return await asyncio.to_thread(query, *args, limit, after)
