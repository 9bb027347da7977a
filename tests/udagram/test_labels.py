"""The label search index (udagram/labels.py): pure helpers, then writes, searches and repairs
against DynamoDB on the moto server subprocess."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from udagram import data, labels

T0 = datetime(2026, 3, 1, tzinfo=UTC)
GROUP = "a" * 32


def test_normalise():
    assert labels.normalise("  Egyptian\u00a0 Cat ") == "egyptian cat"
    assert labels.normalise("ＴＡＢＢＹ") == "tabby"  # NFKC: full-width letters
    assert labels.normalise("Straße") == labels.normalise("STRASSE")  # casefold, not lower
    assert labels.normalise("") == "" and labels.normalise(None) == ""


def test_indexed_labels_keep_the_confident_top_5_once_each():
    top = [("crane", 0.30), ("Crane ", 0.40), ("tabby", 0.19), ("tiger cat", 0.2), ("lynx", 0.05), ("sixth", 0.9)]
    got = labels.indexed_labels(top, 0.2)
    assert got == {
        "crane": labels.Entry("crane", "Crane", 0.40),  # two classes of one name: the higher one
        "tiger cat": labels.Entry("tiger cat", "tiger cat", 0.2),  # at the threshold: kept
    }  # tabby is below it; "sixth" is not in the top 5
    assert labels.indexed_labels(top, 0.0).keys() == {"crane", "tabby", "tiger cat", "lynx"}


# --- against DynamoDB ---------------------------------------------------------------------------


def make_image(predictions: list[tuple[str, float]], minute: int = 0, *, labels_pending: str | None = None,
               group_id: str = GROUP) -> data.ImageModel:
    image_id = data.new_id()
    created = T0 + timedelta(minutes=minute)
    record = data.ImageModel(
        image_id, group_id=group_id, created_key=data.created_key(created, image_id), owner="alice",
        title="t", status="DONE", status_changed_at=data.sortable_time(created), content_type="image/jpeg",
        content_length=1, original_key=data.original_key(image_id, "image/jpeg"), created_at=created,
        predictions=[data.Prediction(label=label, probability=p) for label, p in predictions],
        labels_pending=labels_pending,
    )
    record.save()
    return record


def set_predictions(image_id: str, predictions: list[tuple[str, float]]) -> None:
    data.ImageModel(image_id).update(actions=[data.ImageModel.predictions.set(
        [data.Prediction(label=label, probability=p) for label, p in predictions])])


def index_of(image_id: str) -> dict[str, float]:
    return {e.label_key: e.probability for e in data.ImageLabelModel.scan() if e.image_id == image_id}


def counts() -> dict[str, int]:
    return {row.label_key: int(row.image_count) for row in data.LabelCountModel.scan()}


def calls(operation: str) -> float:
    return data.DYNAMODB_CALLS.labels(operation)._value.get()


def test_sync_twice_and_concurrently_counts_each_entry_once(aws_settings):
    cat = make_image([("tabby", 0.6), ("tiger cat", 0.3), ("lynx", 0.05)])
    first = labels.sync_image(cat.id, 0.2)
    assert first.added == {"tabby", "tiger cat"} and not first.removed
    again = labels.sync_image(cat.id, 0.2)
    assert not again.added and not again.removed
    with ThreadPoolExecutor(4) as pool:  # four deliveries of the same result at once
        list(pool.map(lambda _: labels.sync_image(cat.id, 0.2), range(4)))
    assert index_of(cat.id) == {"tabby": 0.6, "tiger cat": 0.3}
    assert counts() == {"tabby": 1, "tiger cat": 1}
    entry = data.ImageLabelModel.get("tabby", cat.created_key)
    assert (entry.image_id, entry.group_id, entry.label) == (cat.id, GROUP, "tabby")


def test_reprocess_with_other_labels_moves_the_entries_and_counts(aws_settings):
    cat = make_image([("tabby", 0.6), ("tiger cat", 0.3)])
    other = make_image([("tabby", 0.5)], minute=1)
    for image in (cat, other):
        labels.sync_image(image.id, 0.2)
    assert counts() == {"tabby": 2, "tiger cat": 1}

    set_predictions(cat.id, [("Egyptian cat", 0.7), ("tabby", 0.25), ("tiger cat", 0.1)])
    result = labels.sync_image(cat.id, 0.2)
    assert result.added == {"egyptian cat"} and result.removed == {"tiger cat"}
    assert index_of(cat.id) == {"egyptian cat": 0.7, "tabby": 0.25}  # tabby's probability refreshed
    assert counts() == {"tabby": 2, "egyptian cat": 1}  # tiger cat reached 0: its row is gone


def test_deleted_image_loses_its_entries_and_counts(aws_settings):
    cat = make_image([("tabby", 0.6), ("tiger cat", 0.3)])
    dog = make_image([("tabby", 0.4)], minute=1)
    for image in (cat, dog):
        labels.sync_image(image.id, 0.2)
    cat.delete()
    assert labels.sync_image(cat.id, 0.2, known=cat).removed == {"tabby", "tiger cat"}
    dog.delete()
    # Without the caller's copy the entries are found through the by_image index.
    assert labels.sync_image(dog.id, 0.2).removed == {"tabby"}
    assert list(data.ImageLabelModel.scan()) == [] and counts() == {}
    assert labels.sync_image(dog.id, 0.2).removed == set()  # nothing left: a repeat is a no-op


def test_a_stale_read_is_corrected_before_the_sync_returns(aws_settings, monkeypatch):
    """A syncer that read the record before a re-run changed it writes the old labels, then sees the
    change on its verifying read and converges to the new ones, removing its own stale writes."""
    image = make_image([("tabby", 0.6)])
    stale = data.ImageModel.get(image.id)
    set_predictions(image.id, [("lynx", 0.8)])
    reads = iter([stale])
    real_read = labels._read
    monkeypatch.setattr(labels, "_read", lambda image_id: next(reads, None) or real_read(image_id))
    result = labels.sync_image(image.id, 0.2)
    assert result.added == {"tabby", "lynx"} and result.removed == {"tabby"}
    assert index_of(image.id) == {"lynx": 0.8} and counts() == {"lynx": 1}


def test_a_record_that_never_settles_is_left_for_a_retry(aws_settings, monkeypatch):
    image = make_image([("tabby", 0.6)])
    versions = iter(range(100))
    real_read = labels._read

    def changing(image_id):
        record = real_read(image_id)
        record.predictions = [data.Prediction(label=f"label {next(versions)}", probability=0.9)]
        return record

    monkeypatch.setattr(labels, "_read", changing)
    with pytest.raises(labels.IndexBusy):
        labels.sync_image(image.id, 0.2)
    monkeypatch.undo()
    labels.sync_image(image.id, 0.2)  # the retry cleans up what the busy rounds wrote
    assert index_of(image.id) == {"tabby": 0.6} and counts() == {"tabby": 1}


def test_the_pending_marker_is_cleared_only_with_its_own_value(aws_settings):
    image = make_image([("tabby", 0.6)], labels_pending="delivery-1")
    labels.sync_image(image.id, 0.2)
    assert data.ImageModel.get(image.id).labels_pending is None
    data.ImageModel(image.id).update(actions=[data.ImageModel.labels_pending.set("delivery-2")])
    labels._clear_pending(image.id, "delivery-1")  # an older syncer: leaves the newer marker
    assert data.ImageModel.get(image.id).labels_pending == "delivery-2"


def test_search_pages_newest_first_with_a_cursor(aws_settings):
    cats = [make_image([("tabby", 0.3 + i / 100)], minute=i) for i in range(7)]
    unsure = make_image([("tabby", 0.1)], minute=8)  # below the threshold: not indexed
    for image in [*cats, unsure]:
        labels.sync_image(image.id, 0.2)
    newest_first = [c.id for c in reversed(cats)]
    seen, cursor, pages = [], None, 0
    while True:
        before = calls("Query")
        page = labels.search_page("Tabby ", 3, cursor, threshold=0.2)
        assert calls("Query") - before == 1  # no filter at work: one call per page
        seen += [e.image_id for e in page.entries]
        pages += 1
        if not page.has_next:
            break
        cursor = page.end_cursor
        assert data.is_valid_created_key(cursor)
    assert seen == newest_first and pages == 3
    assert labels.search_page("tabby", 10, threshold=0.2).has_next is False
    assert labels.search_page("no such label", 10, threshold=0.2).entries == []


def test_min_probability_filters_within_a_bounded_number_of_calls(aws_settings, monkeypatch):
    images = [make_image([("tabby", 0.9 if i % 4 == 0 else 0.3)], minute=i) for i in range(24)]
    for image in images:
        labels.sync_image(image.id, 0.2)
    sure = [i.id for i in reversed(images) if i.id in {images[n].id for n in range(0, 24, 4)}]
    page = labels.search_page("tabby", 4, min_probability=0.8, threshold=0.2)
    assert [e.image_id for e in page.entries] == sure[:4] and page.has_next
    assert all(e.probability >= 0.8 for e in page.entries)

    # Few matches among many entries: each Query call reads only a few (here 3), so the page
    # comes back short after SEARCH_QUERY_CALLS calls, with a cursor where reading stopped.
    monkeypatch.setattr(labels, "FILTERED_READ_MAX", 3)
    found, cursor, short_pages = [], None, 0
    while True:
        before = calls("Query")
        page = labels.search_page("tabby", 4, cursor, min_probability=0.8, threshold=0.2)
        assert calls("Query") - before <= labels.SEARCH_QUERY_CALLS
        found += [e.image_id for e in page.entries]
        short_pages += len(page.entries) < 4 and page.has_next
        if not page.has_next:
            break
        cursor = page.end_cursor
    assert found == sure and short_pages > 0


def test_label_counts_by_prefix(aws_settings):
    for n, top in enumerate([[("tabby", 0.5)], [("tabby", 0.4), ("tiger cat", 0.3)], [("Egyptian cat", 0.9)],
                             [("tiger", 0.5), ("table lamp", 0.1)]]):
        labels.sync_image(make_image(top, minute=n).id, 0.2)
    as_pairs = lambda found: [(c.label, c.count) for c in found]  # noqa: E731
    assert as_pairs(labels.label_counts("T", 10)) == [("tabby", 2), ("tiger", 1), ("tiger cat", 1)]
    assert as_pairs(labels.label_counts("ti", 1)) == [("tiger", 1)]
    assert as_pairs(labels.label_counts(" egyptian", 10)) == [("Egyptian cat", 1)]  # shown as the model names it
    assert as_pairs(labels.label_counts(None, 10)) == [("Egyptian cat", 1), ("tabby", 2), ("tiger", 1),
                                                      ("tiger cat", 1)]
    assert labels.label_counts("table", 10) == []  # only below the threshold


def test_rebuild_repairs_counts_orphans_and_a_new_threshold(aws_settings, monkeypatch):
    kept = make_image([("tabby", 0.6), ("lynx", 0.25)])
    gone = make_image([("tabby", 0.5)], minute=1)
    never = make_image([("tiger", 0.7)], minute=2)  # e.g. processed while the index was broken
    for image in (kept, gone):
        labels.sync_image(image.id, 0.2)
    gone.delete()  # deleted without its entries (the API's clean-up failed)
    # A crash between an entry's write and its count's: the entry is there, the count not.
    monkeypatch.setattr(labels, "_add_to_count", lambda *a: (_ for _ in ()).throw(ConnectionError("crash")))
    with pytest.raises(ConnectionError):
        labels.sync_image(never.id, 0.2)
    monkeypatch.undo()
    assert counts() == {"tabby": 2, "lynx": 1}

    report = labels.rebuild(0.3)  # the threshold was raised: lynx at 0.25 leaves the index
    assert report.images == 2 and report.orphans == 1 and not report.busy
    assert index_of(kept.id) == {"tabby": 0.6} and index_of(gone.id) == {} and index_of(never.id) == {"tiger": 0.7}
    assert counts() == {"tabby": 1, "tiger": 1}
    assert report.counts_fixed == {"tiger": 1}  # the rest were kept right by the syncs themselves
    assert labels.rebuild(0.3).counts_fixed == {}  # nothing left to fix


def test_labels_commands(aws_settings, monkeypatch):
    from typer.testing import CliRunner

    from udagram.settings import get_settings
    from udagram_cli import app

    image = make_image([("tabby", 0.6), ("tiger cat", 0.3)])
    labels.sync_image(image.id, 0.2)
    labels._add_to_count("tabby", "tabby", +2)  # drifted, as after crashes
    s = aws_settings
    for name, value in {"UDAGRAM_IMAGES_TABLE": s.images_table, "UDAGRAM_IMAGE_LABELS_TABLE": s.image_labels_table,
                        "UDAGRAM_LABEL_COUNTS_TABLE": s.label_counts_table,
                        "AWS_ENDPOINT_URL_DYNAMODB": s.dynamodb_endpoint_url,
                        "AWS_ACCESS_KEY_ID": s.aws_access_key_id, "AWS_SECRET_ACCESS_KEY": s.aws_secret_access_key,
                        "UDAGRAM_CONFIDENCE_THRESHOLD": "0.5"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        rebuilt = runner.invoke(app, ["labels", "rebuild"])
        assert rebuilt.exit_code == 0, rebuilt.output
        assert "1 images: 0 entries added, 1 removed" in rebuilt.output  # tiger cat is below 0.5
        assert "  tabby: -2" in rebuilt.output
        listed = runner.invoke(app, ["labels", "list", "ta"])
        assert listed.exit_code == 0 and listed.output.split() == ["1", "tabby"]
    finally:
        get_settings.cache_clear()
        data.configure(aws_settings)
    assert counts() == {"tabby": 1}
