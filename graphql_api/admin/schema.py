"""The admin's part of the schema (role `admin` in the token): counts by status, the failed images,
retries and bulk re-runs with their progress. Anyone else gets the typed errors `NotAuthenticated`
or `Forbidden` as the result.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import strawberry
from pynamodb.exceptions import DoesNotExist
from strawberry.types import Info

from graphql_api.admin import jobs as bulk
from graphql_api.auth import User as AuthUser
from graphql_api.schema.errors import (
    Forbidden,
    InvalidInput,
    ModelServerUnavailable,
    NotAuthenticated,
    NotFound,
    NotUploaded,
    UserInputError,
    not_authenticated,
)
from graphql_api.schema.mutations import requeue_image
from graphql_api.schema.pagination import page_size
from graphql_api.schema.queries import checked_id
from graphql_api.schema.subscriptions import watching
from graphql_api.schema.types import Image, ImageConnection, ImageEdge, ImageStatus, PageInfo
from udagram import data
from udagram.model_management import ManagementClient, ManagementError

if TYPE_CHECKING:
    from graphql_api.context import Context

# Registered in place (as ImageStatus in graphql_api/schema/types.py); the aliases are the types.
strawberry.enum(bulk.JobKind, description="What a bulk job re-runs.")
strawberry.enum(data.JobState, description="RUNNING while images are queued or processed.")
JobKind: TypeAlias = bulk.JobKind
JobState: TypeAlias = data.JobState


@strawberry.type
class StatusCount:
    status: ImageStatus
    count: int


@strawberry.type
class ModelVersionCount:
    model_version: str = strawberry.field(description="As on the images, e.g. 'classifier 1.0'.")
    count: int


@strawberry.type(description="A bulk re-run and how far it got.")
class AdminJob:
    id: strawberry.ID
    kind: JobKind
    state: JobState
    model_version: str | None = strawberry.field(description="The TorchServe version images are re-run through.")
    total: int = strawberry.field(description="Images selected when it started; at the end, those it re-ran.")
    queued: int
    finished: int = strawberry.field(description="Re-run images that are DONE or FAILED again (or deleted).")
    created_by: str
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_model(cls, m: data.JobModel) -> AdminJob:
        return cls(id=strawberry.ID(m.id), kind=bulk.JobKind(m.kind), state=data.JobState(m.state),
                   model_version=m.model_version, total=int(m.total or 0), queued=int(m.queued or 0),
                   finished=int(m.finished or 0), created_by=m.created_by, created_at=m.created_at,
                   finished_at=m.finished_at)


@strawberry.type
class AdminStats:
    counts: list[StatusCount] = strawberry.field(description="Images by status (COUNT queries on by_status).")
    current_model_version: str | None = strawberry.field(
        description="TorchServe's default version of the model; null if its management API cannot be reached.")
    running_jobs: list[AdminJob]

    @strawberry.field(description="DONE images by the model version that made them. Reads every DONE "
                                  "image's version: ask for it when needed, not on every refresh.")
    async def model_versions(self) -> list[ModelVersionCount]:
        counts = await asyncio.to_thread(_model_version_counts)
        return [ModelVersionCount(model_version=v, count=n) for v, n in counts.most_common()]


def _model_version_counts() -> Counter:
    done = data.ImageModel.by_status.query(data.ImageStatus.DONE.value, attributes_to_get=["model_version"])
    return Counter(image.model_version or "unknown" for image in done)


AdminStatsResult = Annotated[AdminStats | NotAuthenticated | Forbidden, strawberry.union("AdminStatsResult")]
FailedImagesResult = Annotated[ImageConnection | NotAuthenticated | Forbidden, strawberry.union("FailedImagesResult")]
AdminJobResult = Annotated[AdminJob | NotAuthenticated | Forbidden | NotFound, strawberry.union("AdminJobResult")]
RetryImageResult = Annotated[
    Image | NotAuthenticated | Forbidden | InvalidInput | NotFound | NotUploaded, strawberry.union("RetryImageResult")
]
RetryFailedResult = Annotated[AdminJob | NotAuthenticated | Forbidden, strawberry.union("RetryFailedResult")]
RerunOlderModelResult = Annotated[
    AdminJob | NotAuthenticated | Forbidden | InvalidInput | ModelServerUnavailable,
    strawberry.union("RerunOlderModelResult"),
]


def admin(info: Info) -> AuthUser | NotAuthenticated | Forbidden:
    context: Context = info.context
    if context.user is None:
        return not_authenticated(context.auth_error)
    if not context.user.is_admin:
        return Forbidden()
    return context.user


def _model_server(info: Info) -> ManagementClient:
    return ManagementClient.from_settings(info.context.settings, timeout=5)


def _current_model_version(info: Info) -> str | None:
    try:
        return _model_server(info).default_version()
    except ManagementError:
        return None


def _stats(info: Info) -> AdminStats:
    counts = [StatusCount(status=status, count=data.count_by_status(status.value)) for status in data.ImageStatus]
    return AdminStats(counts=counts, current_model_version=_current_model_version(info),
                      running_jobs=[AdminJob.from_model(job) for job in bulk.running()])


def _failed_page(limit: int, after: str | None) -> ImageConnection:
    items, end_cursor = data.page_by_status(data.ImageStatus.FAILED.value, limit, after)
    edges = [ImageEdge(node=Image.from_model(m), cursor=data.status_cursor(m)) for m in items]
    return ImageConnection(edges=edges, page_info=PageInfo(has_next_page=end_cursor is not None,
                                                           end_cursor=edges[-1].cursor if edges else None))


def _retry_image(context: Context, image_id: str) -> Image | NotFound | NotUploaded:
    try:
        model = data.ImageModel.get(image_id, consistent_read=True)
    except DoesNotExist:
        return NotFound(message="no image with this id", id=image_id)
    return requeue_image(context, model)


def _rerun_older_model(info: Info, user: AuthUser,
                       version: str | None) -> AdminJob | InvalidInput | ModelServerUnavailable:
    server = _model_server(info)
    try:
        registered = {v.version for v in server.versions()}
        target = version if version is not None else server.default_version()
    except ManagementError as exc:
        return ModelServerUnavailable(message=str(exc))
    if target is None or target not in registered:
        known = ", ".join(sorted(registered)) or "none"
        return InvalidInput(message=f"model version {target!r} is not registered (registered: {known})",
                            field="version")
    return AdminJob.from_model(bulk.start(bulk.JobKind.RERUN_OLDER_MODEL, user.id, info.context.settings, target))


def _started(info: Info, job: AdminJob | Any) -> Any:
    """A job started here is fed at once by this process's feeder."""
    feeder = info.context.app.feeder
    if isinstance(job, AdminJob) and job.state == data.JobState.RUNNING and feeder is not None:
        feeder.wake()
    return job


def _retry_failed(info: Info, user: AuthUser) -> AdminJob:
    # Pressing "Retry all failed" twice gives the running job, not a second one.
    running = [j for j in bulk.running() if j.kind == bulk.JobKind.RETRY_FAILED.value]
    job = running[0] if running else bulk.start(bulk.JobKind.RETRY_FAILED, user.id, info.context.settings)
    return AdminJob.from_model(job)


@strawberry.type
class AdminQuery:
    @strawberry.field(description="Admin: images by status, the model version in use, running jobs.")
    async def admin_stats(self, info: Info) -> AdminStatsResult:
        user = admin(info)
        if not isinstance(user, AuthUser):
            return user
        return await asyncio.to_thread(_stats, info)

    @strawberry.field(description="Admin: FAILED images with their error, most recently failed first.")
    async def failed_images(self, info: Info, first: int | None = None, after: str | None = None) -> FailedImagesResult:
        user = admin(info)
        if not isinstance(user, AuthUser):
            return user
        limit = page_size(info, first)
        if after is not None and not data.is_valid_status_cursor(after):
            raise UserInputError("`after` is not a cursor this API handed out")
        return await asyncio.to_thread(_failed_page, limit, after)

    @strawberry.field(description="Admin: a bulk job by id.")
    async def admin_job(self, info: Info, id: strawberry.ID) -> AdminJobResult:
        user = admin(info)
        if not isinstance(user, AuthUser):
            return user
        job = await asyncio.to_thread(bulk.get, checked_id(id, "job"))
        return AdminJob.from_model(job) if job else NotFound(message="no job with this id", id=id)


@strawberry.type
class AdminMutation:
    @strawberry.mutation(description="Admin: queue one image (anyone's) for processing again.")
    async def retry_image(self, info: Info, id: strawberry.ID) -> RetryImageResult:
        user = admin(info)
        if not isinstance(user, AuthUser):
            return user
        if not data.is_valid_id(id):
            return InvalidInput(message="id must be 32 lowercase hex characters", field="id")
        return await asyncio.to_thread(_retry_image, info.context, id)

    @strawberry.mutation(description="Admin: re-run every FAILED image, paced (a bulk job).")
    async def retry_failed(self, info: Info) -> RetryFailedResult:
        user = admin(info)
        if not isinstance(user, AuthUser):
            return user
        return _started(info, await asyncio.to_thread(_retry_failed, info, user))

    @strawberry.mutation(description="Admin: re-run every DONE image made by another model version than "
                                     "`version` (default: TorchServe's default version), paced (a bulk job).")
    async def rerun_older_model(self, info: Info, version: str | None = None) -> RerunOlderModelResult:
        user = admin(info)
        if not isinstance(user, AuthUser):
            return user
        if version is not None and not version.strip():
            return InvalidInput(message="version must not be empty", field="version")
        return _started(info, await asyncio.to_thread(_rerun_older_model, info, user, version))


@strawberry.type
class AdminSubscription:
    @strawberry.subscription(description="Admin (signed in through connection_init): a bulk job now, then "
                                         "each time its progress changes, until it is done.")
    async def admin_job_updated(self, info: Info, id: strawberry.ID) -> AsyncGenerator[AdminJobResult, None]:
        user = admin(info)
        if not isinstance(user, AuthUser):
            yield user
            return
        async with watching(info, "job", checked_id(id, "job")) as mailbox:
            while True:
                for _, job in await mailbox.take():
                    if job is None:
                        yield NotFound(message="no job with this id", id=id)
                        return
                    yield AdminJob.from_model(job)
                    if job.state != data.JobState.RUNNING.value:
                        return
