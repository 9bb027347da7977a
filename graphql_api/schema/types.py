"""GraphQL object types (names fixed by the issue: the web page and the worker depend on them)."""

from __future__ import annotations

from datetime import datetime
from typing import TypeAlias

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from udagram import data, labels

# strawberry.enum registers the enum in place and returns it; the alias lets mypy take it as a type.
strawberry.enum(data.ImageStatus, description="Where an image is in its life.")
ImageStatus: TypeAlias = data.ImageStatus


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Prediction:
    label: str
    probability: float


@strawberry.type
class User:
    id: strawberry.ID
    roles: list[str] = strawberry.field(description="From the access token's role claim, e.g. ['admin'].")


@strawberry.type
class Image:
    id: strawberry.ID
    group_id: strawberry.ID
    owner: str
    caption: str
    title: str = strawberry.field(
        description="The caption (or file name) until processed; then the top class, e.g. 'tabby - 77.0%', "
        "or 'Probably tabby - 14.0%' when its probability is below the confidence threshold."
    )
    status: ImageStatus
    predictions: list[Prediction]
    model_version: str | None
    error: str | None
    created_at: datetime
    processed_at: datetime | None
    original_key: strawberry.Private[str]
    processed_key: strawberry.Private[str | None]

    @classmethod
    def from_model(cls, m: data.ImageModel) -> Image:
        return cls(
            id=strawberry.ID(m.id),
            group_id=strawberry.ID(m.group_id),
            owner=m.owner,
            caption=m.caption or "",
            title=m.title or m.caption or m.file_name or "",
            status=data.ImageStatus(m.status),
            predictions=[Prediction(label=p.label, probability=float(p.probability)) for p in (m.predictions or [])],
            model_version=m.model_version,
            error=m.error,
            created_at=m.created_at,
            processed_at=m.processed_at,
            original_key=m.original_key,
            processed_key=m.processed_key,
        )

    @strawberry.field(
        description="Whether the top class is at or above the confidence threshold (null until processed); "
        "labels below it are not searchable."
    )
    def confident(self, info: Info) -> bool | None:
        if not self.predictions:
            return None
        return labels.is_confident(self.predictions[0].probability, info.context.settings.confidence_threshold)

    @strawberry.field(description="Short-lived URL of the original (null until uploaded).")
    async def image_url(self, info: Info) -> str | None:
        if self.status == data.ImageStatus.AWAITING_UPLOAD:
            return None
        return await info.context.original_url(self.original_key)

    @strawberry.field(description="Short-lived URL of the processed copy (null until DONE).")
    async def processed_image_url(self, info: Info) -> str | None:
        if not self.processed_key:
            return None
        return await info.context.processed_url(self.processed_key)


@strawberry.type
class ImageEdge:
    node: Image
    cursor: str


@strawberry.type
class ImageConnection:
    edges: list[ImageEdge]
    page_info: PageInfo


@strawberry.type
class Group:
    id: strawberry.ID
    name: str
    description: str
    owner: str
    created_at: datetime
    image_count: int
    created_key: strawberry.Private[str]

    @classmethod
    def from_model(cls, m: data.GroupModel) -> Group:
        return cls(
            id=strawberry.ID(m.id),
            name=m.name,
            description=m.description or "",
            owner=m.owner,
            created_at=m.created_at,
            image_count=max(0, int(m.image_count or 0)),
            created_key=m.created_key,
        )

    @strawberry.field(description="The group's images, newest first.")
    async def images(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> ImageConnection:
        from graphql_api.schema.pagination import page

        items, has_next = await page(info, data.page_group_images, self.id, first=first, after=after)
        for item in items:  # prime the loader: a later image(id) in this request costs nothing
            info.context.images.prime(item.id, item)
        edges = [ImageEdge(node=Image.from_model(m), cursor=m.created_key) for m in items]
        return ImageConnection(
            edges=edges, page_info=PageInfo(has_next_page=has_next, end_cursor=edges[-1].cursor if edges else None)
        )


@strawberry.type
class GroupEdge:
    node: Group
    cursor: str


@strawberry.type
class GroupConnection:
    edges: list[GroupEdge]
    page_info: PageInfo


@strawberry.type(description="POST the file as multipart/form-data to `url` with `fields` first, `file` last.")
class PresignedPost:
    url: str
    fields: JSON
    expires_at: datetime


@strawberry.type(description="A new image record and the presigned POST to upload its file to.")
class ImageUpload:
    image: Image
    upload: PresignedPost


@strawberry.type
class Deleted:
    id: strawberry.ID

