"""The canary: a share of new uploads classified by a candidate version, per-version metrics."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from handlers.cli import model_app
from handlers.server import TorchServeProcess
from tests.fixtures.torchserve import archive_as_version
from tests.workers.images import jpeg
from tests.workers.uploads import new_upload
from tests.workers.waiting import record, wait_for, wait_status
from udagram import data, jobs
from udagram.model_management import ManagementClient
from udagram.settings import Settings, get_settings
from workers import metrics
from workers.canary import CanarySource, in_share, is_new_upload, write_file
from workers.events import ImageTask

CANDIDATE = "1.1"


# --- without servers -----------------------------------------------------------------------------


def test_the_share_is_stable_per_image_and_close_to_asked() -> None:
    ids = [data.new_id() for _ in range(20000)]
    chosen = [i for i in ids if in_share(i, 0.1)]
    assert 0.09 < len(chosen) / len(ids) < 0.11
    assert chosen == [i for i in ids if in_share(i, 0.1)]  # the same images every time
    assert set(chosen) <= {i for i in ids if in_share(i, 0.5)}  # a larger share keeps them in
    assert not any(in_share(i, 0.0) for i in ids) and all(in_share(i, 1.0) for i in ids)


def test_only_new_uploads_take_part() -> None:
    image_id = data.new_id()
    assert is_new_upload(ImageTask(image_id, "s3"))
    assert is_new_upload(ImageTask(image_id, "reprocess", pending_only=True))  # a lost upload, re-queued
    assert not is_new_upload(ImageTask(image_id, "reprocess"))
    assert not is_new_upload(ImageTask(image_id, "reprocess", model_version="1.0"))


def test_the_file_overrides_the_environment_and_is_followed_live(tmp_path: Path) -> None:
    source = CanarySource(Settings(data_dir=tmp_path, canary_version="2.0", canary_share=0.05))
    assert (source.current().version, source.current().share, source.current().origin) == ("2.0", 0.05, "environment")
    write_file(tmp_path / "canary.json", "3.0", 0.5)
    assert (source.current().version, source.current().share) == ("3.0", 0.5)
    write_file(tmp_path / "canary.json", None, 0.0)  # `udagram model canary --off`
    assert not source.current().active
    (tmp_path / "canary.json").write_text('{"version": "3.0", "share": 7}')  # hand-edited, wrong
    assert (source.current().version, source.current().origin) == ("2.0", "environment")
    os.unlink(tmp_path / "canary.json")  # `--reset`
    assert source.current().version == "2.0" and source.current().active


def test_the_canary_command_shows_and_names_a_bad_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDAGRAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("UDAGRAM_CANARY_VERSION", "2.0")
    monkeypatch.setenv("UDAGRAM_CANARY_SHARE", "0.05")

    def canary(*args: str) -> tuple[int, str]:
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(model_app, ["canary", *args])
        finally:
            get_settings.cache_clear()
        return result.exit_code, result.output

    assert canary() == (0, "canary: 5% of new uploads to version 2.0 (environment)\n")
    assert canary("--off") == (0, f"canary: off ({tmp_path / 'canary.json'})\n")
    (tmp_path / "canary.json").write_text("{not json")
    code, output = canary()
    assert code == 1 and "canary.json" in output and "the worker ignores it" in output
    assert canary("--reset") == (0, "canary: 5% of new uploads to version 2.0 (environment)\n")


# --- a real TorchServe with two versions, the moto server --------------------------------------------



@pytest.fixture(scope="module")
def candidate(torchserve: TorchServeProcess, classifier_archive: Path) -> Iterator[str]:
    """Version 1.1 (the same network as 1.0, its own version) registered beside 1.0, one worker."""
    archive = archive_as_version(classifier_archive, CANDIDATE, torchserve.model_store)
    client = ManagementClient(torchserve.management_url)
    client.register(archive.name, 1)
    try:
        yield CANDIDATE
    finally:
        client.remove(CANDIDATE)
        archive.unlink()


def count(counter, *labels: str) -> float:  # noqa: ANN001
    return counter.labels(*labels)._value.get()


def versions_of(image_ids: list[str]) -> list[str]:
    records = wait_status(image_ids)
    assert all(r.status == "DONE" for r in records), [r.error for r in records]
    return [r.model_version for r in records]


@pytest.mark.torchserve
@pytest.mark.aws
@pytest.mark.parametrize("share, to_candidate", [(1.0, 3), (0.0, 0)])
def test_the_share_of_new_uploads_goes_to_the_candidate(make_settings, start_worker, candidate, tmp_path,
                                                        share, to_candidate):
    settings = make_settings(data_dir=tmp_path, canary_version=candidate, canary_share=share)
    canary_before = count(metrics.PREDICTIONS, candidate, "canary")
    default_before = count(metrics.PREDICTIONS, "1.0", "default")
    ids = [new_upload(settings, jpeg(name)) for name in ("chelsea", "coffee", "astronaut")]
    start_worker(settings)
    assert sorted(versions_of(ids)) == sorted(
        [f"classifier {candidate}"] * to_candidate + ["classifier 1.0"] * (3 - to_candidate))
    assert count(metrics.PREDICTIONS, candidate, "canary") - canary_before == to_candidate
    assert count(metrics.PREDICTIONS, "1.0", "default") - default_before == 3 - to_candidate


@pytest.mark.torchserve
@pytest.mark.aws
def test_a_rerun_naming_a_version_keeps_it(make_settings, start_worker, candidate, tmp_path):
    settings = make_settings(data_dir=tmp_path, canary_version=candidate, canary_share=1.0)
    [image_id] = [new_upload(settings, jpeg("coffee"))]
    start_worker(settings)
    assert versions_of([image_id]) == [f"classifier {candidate}"]
    assert metrics.PREDICTION_SECONDS.labels(candidate)._sum.get() > 0
    explicit_before = count(metrics.PREDICTIONS, "1.0", "explicit")
    jobs.enqueue_reprocess([image_id], "1.0", settings=settings)  # the canary is for new uploads only
    wait_for(lambda: record(image_id).model_version != f"classifier {candidate}", 60, "the re-run")
    assert record(image_id).model_version == "classifier 1.0"
    assert count(metrics.PREDICTIONS, "1.0", "explicit") - explicit_before == 1


@pytest.mark.torchserve
@pytest.mark.aws
def test_a_canary_version_not_served_falls_back_to_the_default(make_settings, start_worker, tmp_path):
    settings = make_settings(data_dir=tmp_path, canary_version="9.9", canary_share=1.0)
    fallbacks_before = count(metrics.CANARY_FALLBACKS, "9.9")
    missing_before = count(metrics.PREDICTION_FAILURES, "9.9", "ModelVersionMissing")
    ids = [new_upload(settings, jpeg(name)) for name in ("chelsea", "coffee")]
    start_worker(settings)
    assert versions_of(ids) == ["classifier 1.0"] * 2  # never failed because of the canary
    assert count(metrics.CANARY_FALLBACKS, "9.9") - fallbacks_before == 2
    assert count(metrics.PREDICTION_FAILURES, "9.9", "ModelVersionMissing") - missing_before == 2
    assert all(r.error is None for r in wait_status(ids))


@pytest.mark.torchserve
@pytest.mark.aws
def test_udagram_model_canary_changes_a_running_worker(make_settings, start_worker, candidate, torchserve,
                                                       tmp_path, monkeypatch):
    settings = make_settings(data_dir=tmp_path)  # no canary in the environment
    start_worker(settings)
    monkeypatch.setenv("UDAGRAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("UDAGRAM_TORCHSERVE_MANAGEMENT_URL", torchserve.management_url)
    monkeypatch.delenv("UDAGRAM_CANARY_VERSION", raising=False)

    def canary(*args: str, ok: bool = True) -> str:
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(model_app, ["canary", *args])
        finally:
            get_settings.cache_clear()
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    assert versions_of([new_upload(settings, jpeg("coffee"))]) == ["classifier 1.0"]
    assert "canary: 100% of new uploads to version 1.1" in canary(candidate, "--share", "1")
    assert versions_of([new_upload(settings, jpeg("coffee"))]) == [f"classifier {candidate}"]
    assert "canary: off" in canary("--off")
    assert versions_of([new_upload(settings, jpeg("coffee"))]) == ["classifier 1.0"]
    assert "has no version '7.7'" in canary("7.7", ok=False)
    assert "canary: off" in canary()  # unchanged by the refused one
