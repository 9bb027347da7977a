"""The label search index: which images carry a label, and how many, kept in DynamoDB.

Used by the worker (after each result), the API (deleting images, searching, autocomplete) and
`udagram labels rebuild`; nothing else writes the two tables (`data.ImageLabelModel`,
`data.LabelCountModel`).

What the index holds. The index of an image mirrors its record: one entry per label of its top 5
`predictions` at or above `confidence_threshold` (labels are compared normalised: NFKC, casefolded,
whitespace collapsed; two classes with one name, as ImageNet's two "crane"s, are one entry with the
higher probability). No record (deleted), no predictions (not processed yet): no entries. A re-run
keeps the old entries until its new predictions are written.

Writing without transactions (dynalite, the local DynamoDB, has no TransactWriteItems).
`sync_image` converges an image's entries to its record, and is safe to repeat and to run
concurrently with itself:
- each wanted entry is written with one UpdateItem that also does `ADD revision 1`; a returned
  revision of 1 means the entry is new, and only then the label's count gets `ADD +1`;
- each unwanted entry (found through the `by_image` index, plus every entry this call wrote and the
  caller's `known` copy of the record) is removed with a conditional DeleteItem; only a delete that
  found the entry gives `ADD -1`. A count that reaches 0 is removed (conditionally: a concurrent +1
  keeps it);
- then the record is read again: if its predictions changed meanwhile (a re-run, a delete), the
  round is repeated against the new state, removing this call's own stale writes. So the last
  syncer of a change always leaves the index matching the record, whatever ran in between;
- finally the record's `labels_pending` marker (set by the worker's DONE write in the same
  UpdateItem as the predictions) is cleared, conditional on the value read.

Crashes. A worker dying between its DONE write and the end of the sync leaves `labels_pending` set;
the message is redelivered, and the delivery that finds the image already DONE finishes the sync
instead of skipping it (workers/processor.py). What cannot be made exact without a transaction is
the count: a crash between an entry's write and its count's ADD leaves the count one off (entries,
and so search, are exact). `rebuild()` (`udagram labels rebuild`) re-syncs every image, removes
entries of deleted images and recomputes every count from the entries; it is also how a changed
`confidence_threshold` reaches images processed before the change.

Reading. `search_page` is one label's entries newest first (range key: the image's created_key,
also the cursor), with `min_probability` as a filter: DynamoDB applies a filter after its Limit, so
a page is read in at most `SEARCH_QUERY_CALLS` Query calls and can come back short (with
`has_next` and a cursor where the reading stopped). `label_counts` is one Query with `begins_with`
on the counts' single partition, alphabetical.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog
from pynamodb.exceptions import DeleteError, DoesNotExist
from pynamodb.expressions.update import Action

from udagram import image_records
from udagram.data import ImageLabelModel, ImageModel, LabelCountModel, condition_failed

log = structlog.get_logger(__name__)

COUNTS_PARTITION = "LABEL"
LABEL_MAX_LENGTH = 100  # longer search labels are refused (ImageNet's longest class name has 31 characters)
TOP = 5  # the predictions that count: the top 5
SYNC_ROUNDS = 4  # an image whose predictions change this often during one sync: try again later
SEARCH_QUERY_CALLS = 3  # at most this many Query calls per search page
FILTERED_READ_MAX = 200  # entries read per Query call when min_probability filters some out


class IndexBusy(Exception):
    """The image's record kept changing during the sync: retry later (the next delivery does)."""


@dataclass(frozen=True)
class Entry:
    label_key: str
    label: str
    probability: float


def normalise(label: str) -> str:
    """The form labels are indexed and searched by: NFKC, casefolded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", label or "").casefold().split())


def is_confident(probability: float, threshold: float) -> bool:
    return probability >= threshold


def indexed_labels(predictions: Iterable[tuple[str, float]], threshold: float) -> dict[str, Entry]:
    """The entries a top 5 gives: its confident labels by normalised label (highest probability wins)."""
    entries: dict[str, Entry] = {}
    for label, probability in list(predictions)[:TOP]:
        key = normalise(label)
        if not key or not is_confident(probability, threshold):
            continue
        if key not in entries or probability > entries[key].probability:
            entries[key] = Entry(key, " ".join(label.split()), float(probability))
    return entries


def record_labels(record: ImageModel | None, threshold: float) -> dict[str, Entry]:
    """The entries an image record should have in the index."""
    if record is None:
        return {}
    return indexed_labels(((p.label, float(p.probability)) for p in record.predictions or []), threshold)


# --- writing -----------------------------------------------------------------------------------


def _add_to_count(label_key: str, label: str | None, delta: int) -> None:
    row = LabelCountModel(COUNTS_PARTITION, label_key)
    actions: list[Action] = [LabelCountModel.image_count.add(delta)]
    if label is not None:
        actions.append(LabelCountModel.label.set(label))
    row.update(actions=actions)
    if (row.image_count or 0) <= 0:
        try:  # conditional: a +1 that landed meanwhile keeps the row
            row.delete(condition=LabelCountModel.image_count <= 0)
        except DeleteError as exc:
            if not condition_failed(exc):
                raise


def _write_entry(entry: Entry, image_id: str, group_id: str, created_key: str) -> bool:
    """Create or refresh an entry; True if it was new (and so counted)."""
    M = ImageLabelModel
    item = M(entry.label_key, created_key)
    item.update(actions=[
        M.image_id.set(image_id), M.group_id.set(group_id), M.label.set(entry.label),
        M.probability.set(entry.probability), M.revision.add(1),
    ])
    if item.revision == 1:
        _add_to_count(entry.label_key, entry.label, +1)
        return True
    return False


def _remove_entry(label_key: str, created_key: str) -> bool:
    """Remove an entry if it exists; True if this call removed it (and so uncounted it)."""
    try:
        ImageLabelModel(label_key, created_key).delete(condition=ImageLabelModel.label_key.exists())
    except DeleteError as exc:
        if condition_failed(exc):
            return False
        raise
    _add_to_count(label_key, None, -1)
    return True


def _read(image_id: str) -> ImageModel | None:
    try:
        return ImageModel.get(image_id, consistent_read=True)
    except DoesNotExist:
        return None


def _indexed(image_id: str) -> dict[str, str]:
    """The image's entries as the `by_image` index shows them (label key -> created_key). The index
    is eventually consistent: entries written a moment ago may be missing (see sync_image)."""
    return {e.label_key: e.created_key for e in ImageLabelModel.by_image.query(image_id, page_size=100)}


@dataclass
class SyncResult:
    added: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)


def sync_image(image_id: str, threshold: float, *, known: ImageModel | None = None) -> SyncResult:
    """Make the image's index entries match its record (see the module's docstring).

    `known`: a copy of the record the caller had (the API passes the one it just deleted), whose
    labels are removed if the record no longer wants them. Raises IndexBusy if the record changed
    in every round, PynamoDB errors if DynamoDB fails; either way a repeat finishes the work.
    """
    result = SyncResult()
    written: set[str] = set()
    created_key = known.created_key if known else None
    candidates = set(record_labels(known, 0.0))  # all its labels: the threshold may have changed
    record = _read(image_id)
    for _ in range(SYNC_ROUNDS):
        wanted = record_labels(record, threshold)
        indexed = _indexed(image_id)
        if record is not None:
            created_key = record.created_key
        elif created_key is None and indexed:
            created_key = next(iter(indexed.values()))
        if created_key is None:
            return result  # never indexed, and nothing to find
        for entry in wanted.values():
            assert record is not None  # no record, no wanted entries
            if _write_entry(entry, image_id, record.group_id, created_key):
                result.added.add(entry.label_key)
            written.add(entry.label_key)
        for label_key in (set(indexed) | written | candidates) - set(wanted):
            if _remove_entry(label_key, indexed.get(label_key, created_key)):
                result.removed.add(label_key)
        after = _read(image_id)
        if (after is None) == (record is None) and record_labels(after, threshold) == wanted:
            if after is not None and after.labels_pending:
                _clear_pending(image_id, after.labels_pending)
            return result
        record = after
    raise IndexBusy(f"the predictions of image {image_id} kept changing during {SYNC_ROUNDS} index updates")


def _clear_pending(image_id: str, value: str) -> None:
    # Refused if a newer result set its own marker: its writer clears it.
    image_records.clear_labels_pending(image_id, value)


# --- reading -----------------------------------------------------------------------------------


@dataclass
class SearchPage:
    entries: list[ImageLabelModel]
    has_next: bool
    end_cursor: str | None  # where the next page starts (may lie past the last entry: a short page)


def search_page(label: str, limit: int, after: str | None = None, *, min_probability: float = 0.0,
                threshold: float = 0.0) -> SearchPage:
    """Entries of a label newest first, at or above max(min_probability, threshold): at most
    SEARCH_QUERY_CALLS Query calls, so a page that the filter thins out can be short."""
    M = ImageLabelModel
    floor = max(min_probability, threshold)
    filtering = min_probability > threshold  # entries below the threshold are not indexed anyway
    read = min(max(4 * (limit + 1), 50), FILTERED_READ_MAX) if filtering else limit + 1
    pages = M.query(
        normalise(label),
        range_key_condition=M.created_key < after if after else None,
        # Kept even when it drops nothing: an index built with a lower threshold (before a rebuild).
        filter_condition=M.probability >= floor if floor > 0 else None,
        scan_index_forward=False,
        page_size=read,
    ).page_iter
    entries: list[ImageLabelModel] = []
    for _ in range(SEARCH_QUERY_CALLS):
        try:
            page = next(pages)
        except StopIteration:
            break
        entries.extend(M.from_raw_data(item) for item in page.get("Items", []))
        if len(entries) > limit or pages.last_evaluated_key is None:
            break
    if len(entries) > limit:
        return SearchPage(entries[:limit], True, entries[limit - 1].created_key)
    resume = pages.last_evaluated_key
    if resume:  # stopped reading before the end: continue after the last entry read
        return SearchPage(entries, True, resume["created_key"]["S"])
    return SearchPage(entries, False, entries[-1].created_key if entries else None)


@dataclass(frozen=True)
class LabelCount:
    label: str
    count: int


def label_counts(prefix: str | None, limit: int) -> list[LabelCount]:
    """Labels that occur, alphabetically (normalised), optionally only those starting with
    `prefix`: one Query."""
    M = LabelCountModel
    key = normalise(prefix or "")
    rows = M.query(COUNTS_PARTITION, range_key_condition=M.label_key.startswith(key) if key else None,
                   limit=limit, page_size=limit)
    return [LabelCount(row.label or row.label_key, int(row.image_count)) for row in rows if row.image_count > 0]


# --- repair ------------------------------------------------------------------------------------


@dataclass
class RebuildReport:
    images: int = 0
    entries_added: int = 0
    entries_removed: int = 0
    orphans: int = 0  # images gone from the table whose entries were still indexed
    counts_fixed: dict[str, int] = field(default_factory=dict)  # label key -> correction applied
    busy: list[str] = field(default_factory=list)  # images that kept changing: run again


def rebuild(threshold: float, *, threads: int = 4,
            progress: Callable[[str], None] = lambda _: None) -> RebuildReport:
    """Re-sync every image, drop entries of deleted images, then recompute every count from the
    entries. Safe while the app runs; a count can still be off by what workers change during the
    last step (run it again when quiet to be exact)."""
    report = RebuildReport()

    def sync(image_id: str) -> None:
        try:
            result = sync_image(image_id, threshold)
        except IndexBusy:
            report.busy.append(image_id)
            return
        report.entries_added += len(result.added)
        report.entries_removed += len(result.removed)

    image_ids = [image.id for image in ImageModel.scan(attributes_to_get=["id"], page_size=500)]
    report.images = len(image_ids)
    progress(f"re-syncing {len(image_ids)} images")
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="labels-rebuild") as pool:
        list(pool.map(sync, image_ids))
        known = set(image_ids)
        orphans = {e.image_id for e in ImageLabelModel.scan(attributes_to_get=["image_id"], page_size=500)} - known
        report.orphans = len(orphans)
        progress(f"removing the entries of {len(orphans)} deleted images")
        list(pool.map(sync, sorted(orphans)))  # no record: its entries go

    progress("recounting")
    actual: Counter[str] = Counter()
    names: dict[str, str] = {}
    for entry in ImageLabelModel.scan(attributes_to_get=["label_key", "label"], page_size=500):
        actual[entry.label_key] += 1
        names.setdefault(entry.label_key, entry.label)
    stored = {row.label_key: int(row.image_count) for row in LabelCountModel.query(COUNTS_PARTITION, page_size=500)}
    for label_key in sorted(set(actual) | set(stored)):
        delta = actual[label_key] - stored.get(label_key, 0)
        if delta:
            # A correction by ADD, not a put: changes made meanwhile by workers are kept.
            _add_to_count(label_key, names.get(label_key), delta)
            report.counts_fixed[label_key] = delta
    return report
