"""Search queries: images by label (`searchImages`) and the labels that occur (`labels`), read from
the label index (udagram/labels.py). `Query` inherits these fields."""

from __future__ import annotations

import asyncio
import math
from functools import partial

import strawberry
from strawberry.types import Info

from graphql_api.schema.errors import UserInputError
from graphql_api.schema.pagination import page, page_size
from graphql_api.schema.types import Image, ImageConnection, ImageEdge, PageInfo
from udagram import labels as label_index


@strawberry.type(description="A label that occurs, and on how many images (confident labels only).")
class LabelCount:
    label: str
    count: int


def _checked_label(value: str, argument: str) -> str:
    # Normalised too: NFKC can make one character many (U+FDFA is 18), and DynamoDB keys are bounded.
    if max(len(value), len(label_index.normalise(value))) > label_index.LABEL_MAX_LENGTH:
        raise UserInputError(f"`{argument}` must be at most {label_index.LABEL_MAX_LENGTH} characters")
    return value


@strawberry.type
class SearchQueries:
    @strawberry.field(
        description="Images whose top 5 holds `label` (case-insensitive, whole label) with at least "
        "`minProbability` (0 to 1) and at or above the confidence threshold, newest first. "
        "A page may hold fewer than `first` images while `pageInfo.hasNextPage` is true: "
        "continue from `pageInfo.endCursor`."
    )
    async def search_images(
        self, info: Info, label: str, min_probability: float | None = 0.0, first: int | None = None,
        after: str | None = None,
    ) -> ImageConnection:
        if not label_index.normalise(_checked_label(label, "label")):
            raise UserInputError("`label` must not be empty")
        min_probability = min_probability or 0.0
        if not (math.isfinite(min_probability) and 0 <= min_probability <= 1):
            raise UserInputError("`minProbability` must be between 0 and 1")
        threshold = info.context.settings.confidence_threshold
        query = partial(label_index.search_page, min_probability=min_probability, threshold=threshold)
        found = await page(info, query, label, first=first, after=after)
        models = await info.context.images.load_many([entry.image_id for entry in found.entries])
        key = label_index.normalise(label)
        edges = []
        for entry, model in zip(found.entries, models, strict=True):
            # The record is the truth: skip an entry whose image was deleted or re-run a moment ago
            # and whose index update is still under way.
            wanted = label_index.record_labels(model, threshold).get(key)
            if wanted is not None and wanted.probability >= min_probability:
                edges.append(ImageEdge(node=Image.from_model(model), cursor=entry.created_key))
        return ImageConnection(edges=edges, page_info=PageInfo(has_next_page=found.has_next,
                                                               end_cursor=found.end_cursor))

    @strawberry.field(
        description="Labels that occur on images (confident labels only), alphabetical, with how many "
        "images carry each; `prefix` (case-insensitive) keeps those that start with it (autocomplete)."
    )
    async def labels(self, info: Info, prefix: str | None = None, first: int | None = None) -> list[LabelCount]:
        limit = page_size(info, first)
        found = await asyncio.to_thread(label_index.label_counts, _checked_label(prefix or "", "prefix"), limit)
        return [LabelCount(label=c.label, count=c.count) for c in found]
