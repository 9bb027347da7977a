"""Typed errors: every expected failure is one of these, all implementing `interface Error`."""

from __future__ import annotations

import strawberry
from graphql import GraphQLError


@strawberry.interface(name="Error", description="An expected failure a client can show as is.")
class Error:
    code: str
    message: str


@strawberry.type(description="Not signed in, or the token was refused (the message says why).")
class NotAuthenticated(Error):
    code: str = "UNAUTHENTICATED"
    message: str = "sign in to do this"


@strawberry.type(description="Only the owner may do this.")
class NotOwner(Error):
    code: str = "FORBIDDEN"
    message: str = "only the owner may do this"


@strawberry.type(description="No group or image with this id.")
class NotFound(Error):
    code: str = "NOT_FOUND"
    message: str = "not found"
    id: str = ""


@strawberry.type(description="An argument is invalid; `field` names it.")
class InvalidInput(Error):
    code: str = "INVALID_INPUT"
    message: str = "invalid input"
    field: str | None = None


@strawberry.type(description="The declared content type is not an accepted image type.")
class UnsupportedContentType(Error):
    code: str = "UNSUPPORTED_CONTENT_TYPE"
    message: str = "unsupported content type"
    allowed: list[str] = strawberry.field(default_factory=list)


@strawberry.type(description="The declared size is over the upload limit.")
class UploadTooLarge(Error):
    code: str = "UPLOAD_TOO_LARGE"
    message: str = "the file is too large"
    max_bytes: int = 0


@strawberry.type(description="The group holds images of other users, so it cannot be deleted.")
class GroupNotEmpty(Error):
    code: str = "GROUP_NOT_EMPTY"
    message: str = "the group holds images of other users"


@strawberry.type(description="The image's file has not been uploaded yet.")
class NotUploaded(Error):
    code: str = "NOT_UPLOADED"
    message: str = "the image has not been uploaded yet"


@strawberry.type(description="Too many requests of this kind; try again after `retryAfterSeconds`.")
class RateLimited(Error):
    code: str = "RATE_LIMITED"
    message: str = "too many requests"
    retry_after_seconds: int = 0


@strawberry.type(description="Signed in, but without the role this needs (the admin view: role `admin`).")
class Forbidden(Error):
    code: str = "FORBIDDEN"
    message: str = "only an admin may do this"


@strawberry.type(description="TorchServe's management API could not tell or check the model version.")
class ModelServerUnavailable(Error):
    code: str = "MODEL_SERVER_UNAVAILABLE"
    message: str = "the model server's management API is not reachable"


class UserInputError(GraphQLError):
    """A bad argument to a query (queries return data, not unions): shown to the client as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message, extensions={"code": "BAD_USER_INPUT"})


def not_authenticated(reason: str | None) -> NotAuthenticated:
    if reason:
        return NotAuthenticated(message=f"sign in to do this: {reason}")
    return NotAuthenticated()
