"""The data layer shared by the API and the worker: groups and images in DynamoDB (PynamoDB), the
rate-limit counters, the admin's bulk jobs, the label search index, and the accounts and sign-in
grants of the API's built-in sign-in (docs/auth.md).

Keys, and why:
- `images` is keyed by the image id, so the worker (which learns the id from the S3 object key)
  reads and conditionally updates a record with one strongly consistent call. The global
  secondary index `by_group` (group_id, created_key) lists a group's images newest first, and
  `by_status` (status, status_changed_at) finds the stuck ones for the worker's reconciliation.
- `groups` is keyed by id; the index `by_created` (kind, created_key) lists all groups newest
  first. `created_key` is "<ISO time>#<id>", unique and ordered, and doubles as the cursor.
  `image_changes` counts additions, deletions and re-runs of the group's images: live group
  subscriptions (graphql_api/live.py) read it to know when to look at the group's images again.
- the rate-limit counters (udagram/ratelimit.py) are a third table, created with the others.
- `jobs` holds the admin's bulk re-runs (graphql_api/admin/) with their progress and the lease
  of the API process feeding each; `by_state` lists the running ones.
- the built-in sign-in's `users` (by name) and `auth-grants` (by "<kind>:<hash or id>"): each read
  and written by key only, with conditions where single use matters.
- `image-labels` is the search index: keyed by (normalised label, the image's created_key), so one
  Query lists a label's images newest first and the cursor is again the created_key. Its index
  `by_image` finds an image's entries (to remove them). `label-counts` holds one row per label
  under the constant partition "LABEL" (range key: the normalised label) for autocomplete with
  `begins_with`. Written only through `udagram/labels.py`.

Image records are written only through `udagram/image_records.py` (their conditions are the
guarantees against duplicate, out-of-order and forged events).
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeVar

from prometheus_client import Counter
from pynamodb.attributes import (
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.condition import And, Condition, Not, Or
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model
from pynamodb.signals import pre_dynamodb_send

from udagram.ratelimit import RateLimitModel
from udagram.settings import Settings, get_settings


class ImageStatus(str, enum.Enum):
    AWAITING_UPLOAD = "AWAITING_UPLOAD"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    FAILED = "FAILED"


# Content types accepted for upload and the extension their object key carries.
CONTENT_TYPE_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
}

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_CREATED_KEY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z#[0-9a-f]{32}$")


def new_id() -> str:
    return uuid.uuid4().hex


def is_valid_id(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value or ""))


def is_valid_created_key(value: str) -> bool:
    """A well-formed `created_key` (the pagination cursor)."""
    return bool(_CREATED_KEY_RE.fullmatch(value or ""))


def utcnow() -> datetime:
    return datetime.now(UTC)


def sortable_time(moment: datetime | None = None) -> str:
    """`status_changed_at` values: fixed-width ISO time (always with microseconds), so the
    by_status index range key sorts and compares chronologically as a string."""
    return (moment or utcnow()).isoformat(timespec="microseconds")


def created_key(created_at: datetime, item_id: str) -> str:
    return f"{created_at.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}#{item_id}"


def original_key(image_id: str, content_type: str) -> str:
    """Object key of an upload in the originals bucket: `originals/<id>.<ext>`."""
    return f"originals/{image_id}.{CONTENT_TYPE_EXTENSIONS[content_type]}"


def processed_key(image_id: str, extension: str = "jpg") -> str:
    """Deterministic key of the processed copy: a retry overwrites, never duplicates."""
    return f"processed/{image_id}.{extension}"


def image_id_from_key(key: str) -> str | None:
    """The image id an object key belongs to, or None for keys this app did not hand out."""
    m = re.fullmatch(r"(?:originals|processed)/([0-9a-f]{32})\.[a-z0-9]+", key or "")
    return m.group(1) if m else None


class Prediction(MapAttribute):
    label = UnicodeAttribute()
    probability = NumberAttribute()


class GroupsByCreated(GlobalSecondaryIndex):
    class Meta:
        index_name = "by_created"
        projection = AllProjection()

    kind = UnicodeAttribute(hash_key=True)
    created_key = UnicodeAttribute(range_key=True)


class GroupModel(Model):
    class Meta:
        table_name = "udagram-groups"
        region = "us-east-1"

    id = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute(default="GROUP")  # constant partition of the by_created index
    created_key = UnicodeAttribute()
    name = UnicodeAttribute()
    description = UnicodeAttribute(default="")
    owner = UnicodeAttribute()
    created_at = UTCDateTimeAttribute()
    image_count = NumberAttribute(default=0)
    image_changes = NumberAttribute(null=True)  # bumped with every addition, deletion, re-run

    by_created = GroupsByCreated()


class ImagesByGroup(GlobalSecondaryIndex):
    class Meta:
        index_name = "by_group"
        projection = AllProjection()

    group_id = UnicodeAttribute(hash_key=True)
    created_key = UnicodeAttribute(range_key=True)


class ImagesByStatus(GlobalSecondaryIndex):
    class Meta:
        index_name = "by_status"
        projection = AllProjection()

    status = UnicodeAttribute(hash_key=True)
    status_changed_at = UnicodeAttribute(range_key=True)  # ISO time, sortable


class ImageModel(Model):
    class Meta:
        table_name = "udagram-images"
        region = "us-east-1"

    id = UnicodeAttribute(hash_key=True)
    group_id = UnicodeAttribute()
    created_key = UnicodeAttribute()
    owner = UnicodeAttribute()
    caption = UnicodeAttribute(default="")
    file_name = UnicodeAttribute(default="")
    title = UnicodeAttribute(default="")
    status = UnicodeAttribute(default=ImageStatus.AWAITING_UPLOAD.value)
    status_changed_at = UnicodeAttribute()
    content_type = UnicodeAttribute()
    content_length = NumberAttribute()
    original_key = UnicodeAttribute()
    processed_key = UnicodeAttribute(null=True)
    predictions = ListAttribute(of=Prediction, null=True)
    model_version = UnicodeAttribute(null=True)
    error = UnicodeAttribute(null=True)
    attempts = NumberAttribute(default=0)  # processing tries by the worker
    # The worker's processing lease: one worker at a time per image (workers/processor.py).
    lease_owner = UnicodeAttribute(null=True)
    lease_expires_at = NumberAttribute(null=True)  # epoch seconds
    source_etag = UnicodeAttribute(null=True)  # ETag of the original the result was made from
    # reprocessImage queued a re-run no worker has leased yet (epoch seconds): further requests are
    # coalesced into it; the worker's lease removes it (workers/processor.py).
    rerun_requested_at = NumberAttribute(null=True)
    # Set by the worker's DONE write, cleared once the search index matches the new predictions:
    # a delivery that finds it set (after a crash in between) finishes the index (udagram/labels.py).
    labels_pending = UnicodeAttribute(null=True)
    created_at = UTCDateTimeAttribute()
    processed_at = UTCDateTimeAttribute(null=True)

    by_group = ImagesByGroup()
    by_status = ImagesByStatus()


class JobState(str, enum.Enum):
    RUNNING = "RUNNING"
    DONE = "DONE"


class JobsByState(GlobalSecondaryIndex):
    class Meta:
        index_name = "by_state"
        projection = AllProjection()

    state = UnicodeAttribute(hash_key=True)
    created_key = UnicodeAttribute(range_key=True)


class JobModel(Model):
    """A bulk re-run: which images (`kind`, `selected_before`), how far it got, who feeds it."""

    class Meta:
        table_name = "udagram-jobs"
        region = "us-east-1"

    id = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute()  # graphql_api.admin.jobs.JobKind
    state = UnicodeAttribute(default=JobState.RUNNING.value)
    created_key = UnicodeAttribute()
    created_at = UTCDateTimeAttribute()
    created_by = UnicodeAttribute()
    # Images whose status changed after this (sortable_time) are not selected: they are new, or
    # already re-run by this job.
    selected_before = UnicodeAttribute()
    model_version = UnicodeAttribute(null=True)  # re-run through this TorchServe version
    total = NumberAttribute(default=0)
    queued = NumberAttribute(default=0)
    finished = NumberAttribute(default=0)
    cursor = UnicodeAttribute(null=True)  # "<status_changed_at>#<id>" of the last image looked at
    outstanding = UnicodeSetAttribute(null=True)  # queued, not finished yet
    lease_owner = UnicodeAttribute(null=True)
    lease_expires_at = NumberAttribute(null=True)  # epoch seconds
    finished_at = UTCDateTimeAttribute(null=True)

    by_state = JobsByState()


class ImageLabelsByImage(GlobalSecondaryIndex):
    class Meta:
        index_name = "by_image"
        projection = KeysOnlyProjection()

    image_id = UnicodeAttribute(hash_key=True)
    label_key = UnicodeAttribute(range_key=True)


class ImageLabelModel(Model):
    """One search index entry: an image whose top 5 holds `label` at or above the confidence threshold."""

    class Meta:
        table_name = "udagram-image-labels"
        region = "us-east-1"

    label_key = UnicodeAttribute(hash_key=True)  # normalised label (labels.normalise)
    created_key = UnicodeAttribute(range_key=True)  # the image's: newest first, and the cursor
    image_id = UnicodeAttribute()
    group_id = UnicodeAttribute()
    label = UnicodeAttribute()  # as the model names it
    probability = NumberAttribute()
    revision = NumberAttribute(default=0)  # every write adds 1: a write that reads back 1 created it

    by_image = ImageLabelsByImage()


class LabelCountModel(Model):
    """How many index entries a label has (autocomplete); rows reaching 0 are removed."""

    class Meta:
        table_name = "udagram-label-counts"
        region = "us-east-1"

    kind = UnicodeAttribute(hash_key=True, default="LABEL")  # one partition: begins_with on the range key
    label_key = UnicodeAttribute(range_key=True)
    label = UnicodeAttribute()
    image_count = NumberAttribute(default=0)  # (not `count`: Model.count() is a method)



class UserModel(Model):
    """An account of the built-in sign-in (graphql_api/accounts.py); `name` is the tokens' `sub`."""

    class Meta:
        table_name = "udagram-users"
        region = "us-east-1"

    name = UnicodeAttribute(hash_key=True)
    password_hash = UnicodeAttribute()  # argon2id, with its parameters and salt
    # pynamodb types `of` as the element type (str) though it takes the element's attribute class
    roles: ListAttribute[str] = ListAttribute(of=UnicodeAttribute, default=list)  # type: ignore[arg-type]
    created_at = UTCDateTimeAttribute()


class AuthGrantModel(Model):
    """What the built-in OpenID provider remembers between requests, so that any API process can
    answer any step: authorization codes (single use, short-lived), refresh tokens (rotated on
    each use) and the sign-in sessions they belong to. Secrets are stored only as SHA-256."""

    class Meta:
        table_name = "udagram-auth-grants"
        region = "us-east-1"

    id = UnicodeAttribute(hash_key=True)  # "code:<sha256>", "refresh:<sha256>" or "session:<id>"
    user = UnicodeAttribute()
    client_id = UnicodeAttribute(default="")
    scope = UnicodeAttribute(default="")
    session = UnicodeAttribute(null=True)  # codes and refresh tokens: the session they belong to
    redirect_uri = UnicodeAttribute(null=True)  # codes
    nonce = UnicodeAttribute(null=True)
    code_challenge = UnicodeAttribute(null=True)
    code_challenge_method = UnicodeAttribute(null=True)
    auth_time = NumberAttribute(null=True)  # epoch seconds of the password check
    expires_at = TTLAttribute()  # worthless after it; DynamoDB's TTL removes it (where supported)
    used_at = NumberAttribute(null=True)  # codes and refresh tokens: redeemed (once), epoch seconds
    revoked_at = NumberAttribute(null=True)  # sessions: signed out, or a replayed secret


MODELS: tuple[type[Model], ...] = (GroupModel, ImageModel, RateLimitModel, JobModel, ImageLabelModel,
                                   LabelCountModel, UserModel, AuthGrantModel)
# The setting naming each model's table.
TABLE_SETTINGS: dict[type[Model], str] = {
    GroupModel: "groups_table",
    ImageModel: "images_table",
    RateLimitModel: "rate_limits_table",
    JobModel: "jobs_table",
    ImageLabelModel: "image_labels_table",
    LabelCountModel: "label_counts_table",
    UserModel: "users_table",
    AuthGrantModel: "auth_grants_table",
}
# Only where the API is its own OpenID provider (local mode): its accounts and grants.
BUILTIN_IDP_MODELS: tuple[type[Model], ...] = (UserModel, AuthGrantModel)


def models_for(settings: Settings) -> tuple[type[Model], ...]:
    """The tables a deployment with these settings uses (ensure_tables, the CDK app)."""
    return tuple(m for m in MODELS if settings.builtin_idp or m not in BUILTIN_IDP_MODELS)

# DynamoDB requests of this process, by operation (served on the API's and the worker's /metrics):
# shows that a page query costs a constant number of calls (bench/api.py reads it).
DYNAMODB_CALLS = Counter(
    "udagram_dynamodb_calls_total", "DynamoDB API calls sent through PynamoDB (retries not counted)", ["operation"]
)


def _count_dynamodb_call(sender: object, operation_name: str, **_: object) -> None:
    DYNAMODB_CALLS.labels(operation_name).inc()


pre_dynamodb_send.connect(_count_dynamodb_call)  # PynamoDB's documented hook (blinker signal)


def configure(settings: Settings | None = None) -> None:
    """Point the models at the configured tables and endpoint (call once per process/test)."""
    settings = settings or get_settings()
    for model in MODELS:
        model.Meta.table_name = getattr(settings, TABLE_SETTINGS[model])
        model.Meta.region = settings.aws_region
        model.Meta.host = settings.dynamodb_endpoint_url
        model.Meta.aws_access_key_id = settings.aws_access_key_id
        model.Meta.aws_secret_access_key = settings.aws_secret_access_key
        model.Meta.connect_timeout_seconds = 5
        model.Meta.read_timeout_seconds = 15
        model.Meta.max_retry_attempts = 3
        model._connection = None  # drop a connection made with the previous settings


def ensure_tables(settings: Settings | None = None) -> None:
    """Create missing tables (on-demand billing) and wait until they are active."""
    settings = settings or get_settings()
    configure(settings)
    for model in models_for(settings):
        if not model.exists():
            # Tables with a TTL attribute get TTL turned on; dynalite (local) does not support it.
            model.create_table(billing_mode="PAY_PER_REQUEST", wait=True,
                               ignore_update_ttl_errors=settings.mode == "local")


# --- queries shared by the API (and usable by the worker) -------------------------------------

# The tables whose items are keyed by `id` (what batch_get and the live updates read by id).
IdModel = TypeVar("IdModel", GroupModel, ImageModel, JobModel)


def _page(index, hash_key: str, range_attr, limit: int, after: str | None) -> tuple[list, bool]:
    """One DynamoDB Query: up to `limit` items newest first after the cursor, and whether more exist.

    Reads limit + 1 items so `hasNextPage` needs no second call.
    """
    condition = range_attr < after if after else None
    items = list(
        index.query(
            hash_key,
            range_key_condition=condition,
            scan_index_forward=False,
            limit=limit + 1,
            page_size=limit + 1,
        )
    )
    return items[:limit], len(items) > limit


def page_groups(limit: int, after: str | None = None) -> tuple[list[GroupModel], bool]:
    """Groups newest first (one Query on the `by_created` index)."""
    return _page(GroupModel.by_created, "GROUP", GroupsByCreated.created_key, limit, after)


def page_group_images(group_id: str, limit: int, after: str | None = None) -> tuple[list[ImageModel], bool]:
    """A group's images newest first (one Query on the `by_group` index)."""
    return _page(ImageModel.by_group, group_id, ImagesByGroup.created_key, limit, after)


def batch_get(model: type[IdModel], ids: Iterable[str]) -> dict[str, IdModel]:
    """Items by id in BatchGetItem calls of up to 100 keys (missing ids are absent)."""
    wanted = list(dict.fromkeys(i for i in ids if is_valid_id(i)))
    return {item.id: item for item in model.batch_get(wanted)} if wanted else {}


class _AllOrAny(Condition):
    """An n-ary AND or OR in one pair of parentheses."""

    def __init__(self, operator: str, conditions: list[Condition]) -> None:
        super().__init__(operator, *conditions)
        self.format_string = "(" + f" {operator} ".join(f"{{{i}}}" for i in range(len(conditions))) + ")"


def flat(condition: Condition) -> Condition:
    """The same condition with nested ANDs merged into one n-ary AND (ORs likewise), throughout.

    PynamoDB puts every `&` and `|` in its own parentheses, and dynalite (the local DynamoDB)
    parses in time exponential in their depth: 8 conditions chained with `&` took 0.4 s per
    request, the worker's lease 40-70 ms against 10-13 ms for a third of its terms."""
    if isinstance(condition, (And, Or)):
        terms: list[Condition] = []

        def collect(term: Condition) -> None:
            if type(term) is type(condition):
                for inner in term.values:
                    collect(inner)
            else:
                terms.append(flat(term))

        collect(condition)
        return _AllOrAny(condition.operator, terms)
    if isinstance(condition, Not):
        return Not(flat(condition.values[0]))
    return condition


def condition_failed(exc: Exception) -> bool:
    """Whether a PynamoDB write error is its condition failing (rather than DynamoDB failing)."""
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


def add_to_image_count(group_id: str, delta: int) -> None:
    """Atomic ADD on the group's counter (and its change marker); fails (PutError/UpdateError)
    if the group is gone."""
    GroupModel(id=group_id).update(
        actions=[GroupModel.image_count.add(delta), GroupModel.image_changes.add(1)],
        condition=GroupModel.id.exists(),
    )


def touch_groups(group_ids: Iterable[str]) -> None:
    """Bump the change marker of groups whose images are re-run (a finished image is about to be
    processed again): their live subscribers look at the group's images again. Gone groups are skipped."""
    for group_id in dict.fromkeys(group_ids):
        try:
            GroupModel(id=group_id).update(actions=[GroupModel.image_changes.add(1)],
                                           condition=GroupModel.id.exists())
        except UpdateError as exc:
            if not condition_failed(exc):
                raise


_STATUS_CURSOR_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00#[0-9a-f]{32}$")


def status_cursor(image: ImageModel) -> str:
    """Position of an image in the `by_status` index: "<status_changed_at>#<id>"."""
    return f"{image.status_changed_at}#{image.id}"


def is_valid_status_cursor(value: str) -> bool:
    return bool(_STATUS_CURSOR_RE.fullmatch(value or ""))


def _status_start_key(status: str, cursor: str | None) -> dict | None:
    if cursor is None:
        return None
    changed_at, _, image_id = cursor.rpartition("#")
    return {"id": {"S": image_id}, "status": {"S": status}, "status_changed_at": {"S": changed_at}}


def page_by_status(status: str, limit: int, after: str | None = None, *, newest_first: bool = True,
                   changed_before: str | None = None, filter_condition=None) -> tuple[list[ImageModel], str | None]:
    """Up to `limit` images with `status` from the `by_status` index after the cursor `after`
    (a `status_cursor`), newest or oldest change first, only those whose status changed before
    `changed_before` and that match `filter_condition`; and the cursor of the last one if more
    follow (None at the end). Reads `limit + 1` matching items, so the end needs no extra call."""
    condition = ImagesByStatus.status_changed_at < changed_before if changed_before else None
    items = list(ImageModel.by_status.query(
        status,
        range_key_condition=condition,
        filter_condition=filter_condition,
        scan_index_forward=not newest_first,
        limit=limit + 1,
        page_size=limit + 1,
        last_evaluated_key=_status_start_key(status, after),
    ))
    if len(items) > limit:
        return items[:limit], status_cursor(items[limit - 1])
    return items, None


def count_by_status(status: str, filter_condition=None) -> int:
    """How many images have `status` (COUNT queries on the `by_status` index: no items are returned)."""
    return ImageModel.by_status.count(status, filter_condition=filter_condition)
