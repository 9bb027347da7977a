"""Mutations: signed-in writes. Expected failures are typed errors in each result union.

DynamoDB and S3 calls are blocking (PynamoDB, boto3), so each mutation's body runs in a worker
thread; the event loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import strawberry
import structlog
from pynamodb.exceptions import DeleteError, DoesNotExist, PynamoDBException, UpdateError
from strawberry.scalars import JSON
from strawberry.types import Info

from graphql_api.auth import User as AuthUser
from graphql_api.schema.errors import (
    GroupNotEmpty,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    NotOwner,
    NotUploaded,
    RateLimited,
    UnsupportedContentType,
    UploadTooLarge,
    not_authenticated,
)
from graphql_api.schema.types import Deleted, Group, Image, ImageUpload, PresignedPost
from graphql_api.storage import ALLOWED_CONTENT_TYPES
from udagram import data, image_records, jobs, labels, ratelimit

if TYPE_CHECKING:
    from graphql_api.context import Context

log = structlog.get_logger(__name__)
T = TypeVar("T")
Owned = TypeVar("Owned", data.ImageModel, data.GroupModel)

GROUP_NAME_MAX = 80
GROUP_DESCRIPTION_MAX = 500
CAPTION_MAX = 300
FILE_NAME_MAX = 255

CreateGroupResult = Annotated[
    Group | NotAuthenticated | InvalidInput, strawberry.union("CreateGroupResult")
]
CreateImageResult = Annotated[
    ImageUpload | NotAuthenticated | InvalidInput | NotFound | UnsupportedContentType | UploadTooLarge,
    strawberry.union("CreateImageResult"),
]
DeleteResult = Annotated[
    Deleted | NotAuthenticated | InvalidInput | NotFound | NotOwner | GroupNotEmpty,
    strawberry.union("DeleteResult"),
]
ReprocessResult = Annotated[
    Image | NotAuthenticated | InvalidInput | NotFound | NotOwner | NotUploaded | RateLimited,
    strawberry.union("ReprocessResult"),
]


@strawberry.input
class CreateGroupInput:
    name: str = strawberry.field(description=f"1-{GROUP_NAME_MAX} characters after trimming.")
    description: str = strawberry.field(default="", description=f"At most {GROUP_DESCRIPTION_MAX} characters.")


@strawberry.input
class CreateImageInput:
    group_id: strawberry.ID
    content_type: str = strawberry.field(description="image/jpeg, image/png, image/webp, image/gif or image/bmp.")
    content_length: int = strawberry.field(description="Size of the file in bytes.")
    caption: str = strawberry.field(default="", description=f"At most {CAPTION_MAX} characters.")
    file_name: str | None = strawberry.field(
        default=None, description=f"The file's name (the title until processed); at most {FILE_NAME_MAX}."
    )


def _clean(value: str | None) -> str:
    """Trimmed, with control characters (newlines included) turned into spaces."""
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in (value or "")).strip()


def _user(info: Info) -> AuthUser | NotAuthenticated:
    context: Context = info.context
    if context.user is None:
        return not_authenticated(context.auth_error)
    return context.user


def _invalid_id(value: str, field: str) -> InvalidInput | None:
    if data.is_valid_id(value):
        return None
    return InvalidInput(message=f"{field} must be 32 lowercase hex characters", field=field)


# --- bodies (blocking; run in a thread) --------------------------------------------------------


def _create_group(user: AuthUser, name: str, description: str) -> Group:
    now = data.utcnow()
    group_id = data.new_id()
    model = data.GroupModel(
        id=group_id,
        created_key=data.created_key(now, group_id),
        name=name,
        description=description,
        owner=user.id,
        created_at=now,
        image_count=0,
    )
    model.save(condition=data.GroupModel.id.does_not_exist())
    return Group.from_model(model)


def _create_image(context: Context, user: AuthUser, group_id: str, caption: str, file_name: str,
                  content_type: str, content_length: int) -> ImageUpload | NotFound:
    try:
        data.GroupModel.get(group_id, attributes_to_get=["id"])
    except DoesNotExist:
        return NotFound(message="no group with this id", id=group_id)
    model = image_records.create(group_id=group_id, owner=user.id, caption=caption, file_name=file_name,
                                 content_type=content_type, content_length=content_length)
    try:
        data.add_to_image_count(group_id, 1)
    except UpdateError as exc:
        # The group was deleted meanwhile, or DynamoDB failed (the client gets an error and may
        # retry): take the image back out, so no record waits for an upload nobody will send.
        try:
            image_records.discard_new(model)
        except PynamoDBException:
            pass  # DynamoDB is down: reconciliation marks it FAILED once its upload URL expired
        if data.condition_failed(exc):
            return NotFound(message="no group with this id", id=group_id)
        raise
    upload = context.storage.presigned_upload(model.original_key, content_type, content_length)
    return ImageUpload(
        image=Image.from_model(model),
        upload=PresignedPost(url=upload.url, fields=JSON(upload.fields), expires_at=upload.expires_at),
    )


def _owned(model_class: type[Owned], item_id: str, user: AuthUser, action: str) -> Owned | NotFound | NotOwner:
    """The image or group `item_id`, read consistently, if `user` owns it (`action`: for the refusal)."""
    what = "image" if model_class is data.ImageModel else "group"
    try:
        item = model_class.get(item_id, consistent_read=True)
    except DoesNotExist:
        return NotFound(message=f"no {what} with this id", id=item_id)
    if item.owner != user.id:
        return NotOwner(message=f"only the {what}'s owner may {action} it")
    return item


def _delete_image_record(context: Context, model: data.ImageModel) -> bool:
    """Objects first (a retry after a failure finds the record and tries again), then the record,
    then the group's counter and the image's search index entries. False if someone else deleted
    the record meanwhile."""
    context.storage.delete_image_objects(model.id, model.original_key, model.processed_key)
    if not image_records.delete(model):  # DynamoDB failing raises: an error, and a retry finds the record
        return False
    try:
        data.add_to_image_count(model.group_id, -1)
    except UpdateError as exc:
        if not data.condition_failed(exc):  # else the group is gone already
            # The image is gone; answering an error would make the owner retry a done delete.
            log.warning("group image count not lowered", group_id=model.group_id, error=str(exc))
    try:  # after the record: a worker's index update that runs meanwhile then finds it gone too
        labels.sync_image(model.id, context.settings.confidence_threshold, known=model)
    except (PynamoDBException, labels.IndexBusy) as exc:
        # The image is gone; search already skips entries without a record, and
        # `udagram labels rebuild` removes them and corrects the counts.
        log.warning("search index entries of a deleted image not removed", image_id=model.id, error=str(exc))
    return True


def _delete_image(context: Context, user: AuthUser, image_id: str) -> Deleted | NotFound | NotOwner:
    model = _owned(data.ImageModel, image_id, user, "delete")
    if isinstance(model, NotFound | NotOwner):
        return model
    if not _delete_image_record(context, model):
        return NotFound(message="no image with this id", id=image_id)
    return Deleted(id=strawberry.ID(image_id))


def _group_images(group_id: str) -> list[data.ImageModel]:
    return list(data.ImageModel.by_group.query(group_id, page_size=100))


def _delete_group(context: Context, user: AuthUser, group_id: str) -> Deleted | NotFound | NotOwner | GroupNotEmpty:
    group = _owned(data.GroupModel, group_id, user, "delete")
    if isinstance(group, NotFound | NotOwner):
        return group
    images = _group_images(group_id)
    others = sum(1 for image in images if image.owner != user.id)
    if others:
        return GroupNotEmpty(
            message=f"the group holds {others} image(s) of other users; they must delete them first"
        )
    for image in images:
        _delete_image_record(context, image)
    try:
        # Refused if an image arrived meanwhile (its createImage raised the counter).
        group.delete(condition=data.GroupModel.id.exists() & (data.GroupModel.image_count <= 0))
    except DeleteError as exc:
        if not data.condition_failed(exc):
            raise  # DynamoDB failed: an error, and the group is still there to delete again
        try:
            data.GroupModel.get(group_id, consistent_read=True)
        except DoesNotExist:
            return NotFound(message="no group with this id", id=group_id)
        return GroupNotEmpty(message="an image was added to the group meanwhile; try again")
    return Deleted(id=strawberry.ID(group_id))


def _reprocess_image(context: Context, user: AuthUser, image_id: str) -> ReprocessResult:
    settings = context.settings
    limit = ratelimit.hit(f"reprocessImage:user:{user.id}", settings.reprocess_rate_limit,
                          settings.reprocess_rate_limit_window_seconds)
    if not limit.allowed:
        window = settings.reprocess_rate_limit_window_seconds
        return RateLimited(
            message=f"at most {settings.reprocess_rate_limit} re-runs every {window} s per user; "
                    f"try again in {limit.retry_after_seconds} s",
            retry_after_seconds=limit.retry_after_seconds,
        )
    model = _owned(data.ImageModel, image_id, user, "reprocess")
    if isinstance(model, NotFound | NotOwner):
        return model
    return requeue_image(context, model)


def requeue_image(context: Context, model: data.ImageModel) -> Image | NotFound | NotUploaded:
    """Queue an image for processing again (its owner's reprocess, an admin's retry): PROCESSING
    with fresh tries, one re-run message (coalesced with one still pending), and its group's live
    subscribers told."""
    settings = context.settings
    image_id = model.id
    if model.status == data.ImageStatus.AWAITING_UPLOAD.value and not context.storage.original_exists(
        model.original_key
    ):
        return NotUploaded(message="upload the image's file first")
    requested_at = time.time()
    if not image_records.request_rerun(model, requested_at, settings.worker_stale_processing_seconds):
        try:  # gone, or coalesced into the pending re-run: answer the image as it is
            return Image.from_model(data.ImageModel.get(image_id, consistent_read=True))
        except DoesNotExist:
            return NotFound(message="no image with this id", id=image_id)
    try:
        jobs.enqueue_reprocess([image_id], settings=settings)
    except Exception:
        # Nothing was queued: take the marker back so a retry queues the re-run.
        try:
            image_records.withdraw_rerun_request(model, requested_at)
        except PynamoDBException:
            pass  # it expires after worker_stale_processing_seconds anyway
        raise
    data.touch_groups([model.group_id])
    return Image.from_model(model)


# --- resolvers ---------------------------------------------------------------------------------


async def _on_image_or_group(
    info: Info, id: str, body: Callable[[Context, AuthUser, str], T]
) -> T | NotAuthenticated | InvalidInput:
    """A mutation on one image or group by id: signed in and a well-formed id, then `body` in a thread."""
    user = _user(info)
    if isinstance(user, NotAuthenticated):
        return user
    if error := _invalid_id(id, "id"):
        return error
    return await asyncio.to_thread(body, info.context, user, id)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Create a group (signed in).")
    async def create_group(self, info: Info, input: CreateGroupInput) -> CreateGroupResult:
        user = _user(info)
        if isinstance(user, NotAuthenticated):
            return user
        name = _clean(input.name)
        if not 1 <= len(name) <= GROUP_NAME_MAX:
            return InvalidInput(message=f"name must be 1 to {GROUP_NAME_MAX} characters", field="name")
        description = (input.description or "").strip()
        if len(description) > GROUP_DESCRIPTION_MAX:
            return InvalidInput(
                message=f"description must be at most {GROUP_DESCRIPTION_MAX} characters", field="description"
            )
        return await asyncio.to_thread(_create_group, user, name, description)

    @strawberry.mutation(description="Create an image record and a presigned POST to upload its file.")
    async def create_image(self, info: Info, input: CreateImageInput) -> CreateImageResult:
        user = _user(info)
        if isinstance(user, NotAuthenticated):
            return user
        settings = info.context.settings
        if error := _invalid_id(input.group_id, "groupId"):
            return error
        caption = (input.caption or "").strip()
        if len(caption) > CAPTION_MAX:
            return InvalidInput(message=f"caption must be at most {CAPTION_MAX} characters", field="caption")
        file_name = _clean(input.file_name)
        if len(file_name) > FILE_NAME_MAX:
            return InvalidInput(message=f"fileName must be at most {FILE_NAME_MAX} characters", field="fileName")
        if input.content_type not in ALLOWED_CONTENT_TYPES:
            return UnsupportedContentType(
                message=f"{input.content_type[:100]!r} is not accepted; "
                        f"upload one of: {', '.join(ALLOWED_CONTENT_TYPES)}",
                allowed=list(ALLOWED_CONTENT_TYPES),
            )
        if input.content_length < 1:
            return InvalidInput(message="contentLength must be at least 1 byte", field="contentLength")
        if input.content_length > settings.max_upload_bytes:
            return UploadTooLarge(
                message=f"the file is {input.content_length} bytes; the limit is {settings.max_upload_bytes}",
                max_bytes=settings.max_upload_bytes,
            )
        return await asyncio.to_thread(
            _create_image, info.context, user, input.group_id, caption, file_name, input.content_type,
            input.content_length,
        )

    @strawberry.mutation(description="Delete an image and its files (owner only).")
    async def delete_image(self, info: Info, id: strawberry.ID) -> DeleteResult:
        return await _on_image_or_group(info, id, _delete_image)

    @strawberry.mutation(
        description="Delete a group with its images (owner only); refused while it holds other users' images."
    )
    async def delete_group(self, info: Info, id: strawberry.ID) -> DeleteResult:
        return await _on_image_or_group(info, id, _delete_group)

    @strawberry.mutation(
        description="Queue an image for classification again (owner only). A request while a re-run is "
        "already queued joins it; each user has reprocess_rate_limit calls per window (RateLimited)."
    )
    async def reprocess_image(self, info: Info, id: strawberry.ID) -> ReprocessResult:
        return await _on_image_or_group(info, id, _reprocess_image)
