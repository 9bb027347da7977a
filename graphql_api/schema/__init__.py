"""The GraphQL schema: types, queries, mutations, typed errors, and the protective extensions."""

from __future__ import annotations

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors, MaxTokensLimiter

from graphql_api.schema import errors, types
from graphql_api.schema.errors import UserInputError
from graphql_api.schema.limits import QueryLimits
from graphql_api.schema.mutations import Mutation
from graphql_api.schema.queries import Query
from udagram.settings import Settings


def _should_mask(error: GraphQLError) -> bool:
    """Mask unexpected exceptions from resolvers; keep parse/validation errors and our own."""
    original = error.original_error
    return original is not None and not isinstance(original, UserInputError)


def build_schema(settings: Settings) -> strawberry.Schema:
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        types=[
            errors.NotAuthenticated,
            errors.NotOwner,
            errors.NotFound,
            errors.InvalidInput,
            errors.UnsupportedContentType,
            errors.UploadTooLarge,
            errors.GroupNotEmpty,
            errors.NotUploaded,
            errors.RateLimited,
            types.ImageUpload,
        ],
        extensions=[  # factories: a fresh extension per request
            lambda: MaxTokensLimiter(max_token_count=settings.max_query_tokens),
            # depth, aliases, cost, repeated fields: one linear pass before graphql-core's validation
            lambda: QueryLimits(settings),
            lambda: MaskErrors(should_mask_error=_should_mask),
        ],
    )


def schema_sdl() -> str:
    """The schema in SDL, as committed in schema.graphql (settings do not change it: the defaults,
    not the environment, are used)."""
    return build_schema(Settings.model_construct()).as_str() + "\n"
