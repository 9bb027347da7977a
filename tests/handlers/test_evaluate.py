"""`udagram model evaluate`: versions judged side by side through the real inference API."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from handlers.evaluate import Answer, score
from handlers.server import TorchServeProcess
from tests.handlers.conftest import model_command
from tests.handlers.photo_sets import PHOTOS, write_label_folders


def answer(label: str, top5: list[str], prob1: float = 0.5, latency: float = 0.01, error: str | None = None) -> Answer:
    probs = (prob1, *[(1 - prob1) / 5] * (len(top5) - 1)) if top5 else ()
    return Answer(label, Path(f"{label}.jpg"), tuple(top5), probs, latency, error)


def test_figures_of_one_version() -> None:
    answers = [
        answer("Egyptian cat", ["egyptian CAT", "tabby", "tiger cat", "lynx", "lens cap"], 0.6, 0.010),  # top-1
        answer("Egyptian cat", ["tabby", "Egyptian cat", "tiger cat", "lynx", "lens cap"], 0.4, 0.030),  # top-5
        answer("espresso", ["cup", "consomme", "eggnog", "soup bowl", "coffee mug"], 0.2, 0.020),  # miss
        answer("astronaut", [], error="not a JPEG, PNG, WebP, GIF or BMP image"),  # refused
    ]
    result = score("1.0", answers, ["tabby", "Egyptian cat", "espresso", "cup"])
    assert (result.n, result.top1_hits, result.top5_hits, result.errors) == (4, 1, 2, 1)
    assert result.top1_accuracy == 0.25 and result.top5_accuracy == 0.5
    assert result.mean_confidence == pytest.approx(0.4)  # of the three answers
    assert result.latency_ms("mean") == pytest.approx(20.0)
    assert result.latency_ms("p50") == pytest.approx(20.0)
    assert result.latency_ms("p95") == pytest.approx(29.0)
    assert result.unknown_labels == ["astronaut"]
    assert result.per_label == {"Egyptian cat": (2, 1), "espresso": (1, 0), "astronaut": (1, 0)}
    assert score("1.0", answers, None).unknown_labels is None  # class list not available: not checked


def cells(report: str, row: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {row} |"))
    return [cell.strip() for cell in line.strip("|").split("|")[1:]]


@pytest.mark.torchserve
def test_two_versions_side_by_side(torchserve: TorchServeProcess, trained_registered: str, tmp_path: Path) -> None:
    photos = write_label_folders(tmp_path / "photos", per_label=3, seed=11, originals=True)
    report_file = tmp_path / "report.md"
    output = model_command(torchserve, tmp_path / "data", "evaluate", str(photos),
                           "--versions", f"1.0,{trained_registered}", "--report", str(report_file))
    assert f"report: {report_file}" in output
    assert "top-1 accuracy" in output and f"version {trained_registered}" in output  # the terminal table
    report = report_file.read_text()

    # The expected figures, from the inference API directly.
    expected: dict[str, dict[str, int]] = {}
    for version in ("1.0", trained_registered):
        hits = expected.setdefault(version, {"top1": 0, "top5": 0})
        for label in PHOTOS:
            for path in sorted((photos / label).iterdir()):
                got = httpx.post(f"{torchserve.inference_url}/predictions/classifier/{version}",
                                 content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"},
                                 timeout=120).json()
                hits["top1"] += got["top5"][0].casefold() == label.casefold()
                hits["top5"] += label.casefold() in [c.casefold() for c in got["top5"]]
                if version == "1.0" and path.name == "original.jpg" and label == "Egyptian cat":
                    assert got["top5"][0] == "Egyptian cat"  # chelsea, untouched

    assert cells(report, "images") == ["12", "12"]
    top1 = [int(re.search(r"\((\d+)\)", c).group(1)) for c in cells(report, "top-1 accuracy")]
    top5 = [int(re.search(r"\((\d+)\)", c).group(1)) for c in cells(report, "top-5 accuracy")]
    assert top1 == [expected["1.0"]["top1"], expected[trained_registered]["top1"]]
    assert top5 == [expected["1.0"]["top5"], expected[trained_registered]["top5"]]
    # 1.0 has no "astronaut" class: those 4 photos are misses, and the label is named
    assert cells(report, "labels it does not know") == ["astronaut", "-"]
    assert top1[0] <= 8 and cells(report, "astronaut")[0] == "0/4"  # per label
    assert top1[1] >= 11  # the trained head knows all three
    for row in ("latency mean", "latency p50", "latency p95"):
        assert all(float(c.removesuffix(" ms")) > 0 for c in cells(report, row))
    p50, p95 = (float(cells(report, row)[0].removesuffix(" ms")) for row in ("latency p50", "latency p95"))
    assert p50 <= p95
    confidence = [float(c.removesuffix("%")) for c in cells(report, "mean top-1 confidence")]
    assert all(0 < c <= 100 for c in confidence)


@pytest.mark.torchserve
def test_evaluate_errors_are_clear(torchserve: TorchServeProcess, tmp_path: Path) -> None:
    photos = write_label_folders(tmp_path / "photos", per_label=1, seed=1, photos={"espresso": "coffee"})
    out = model_command(torchserve, tmp_path / "data", "evaluate", str(photos), "--versions", "1.0,9.9", ok=False)
    assert "error: not registered: 9.9 (registered: 1.0" in out
    out = model_command(torchserve, tmp_path / "data", "evaluate", str(tmp_path / "nowhere"), ok=False)
    assert "is not a folder" in out
