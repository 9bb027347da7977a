"""`udagram model evaluate DIR`: judge model versions side by side on labelled photos.

Every photo of DIR/<label>/ goes through TorchServe's inference API (the path users' uploads
take) once per version, the versions taking turns photo by photo so that a busy moment on the
machine weighs on all of them alike. Per version: top-1 and top-5 accuracy, the mean confidence
of the top-1 answer, and the client-side latency of a request (mean, p50, p95; one request at a
time, after one warm-up request per version).

A label matches a class name case-insensitively. Every version is scored on the same photos: a
photo whose label a version does not know counts as a miss for it, and those labels are listed.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from handlers.image_classifier import LABELS_FILE

OCTET = {"Content-Type": "application/octet-stream"}


class EvaluationError(Exception):
    """The evaluation cannot go on (server down, unknown version); str() says why."""


@dataclass(frozen=True)
class Answer:
    """One photo through one version: its top 5, or the error the server gave it."""

    label: str
    path: Path
    top5: tuple[str, ...] = ()
    prob5: tuple[float, ...] = ()
    latency_s: float = 0.0
    error: str | None = None


@dataclass
class VersionScore:
    version: str
    n: int = 0
    top1_hits: int = 0
    top5_hits: int = 0
    errors: int = 0
    confidences: list[float] = field(default_factory=list)  # top-1 probability of each answer
    latencies_s: list[float] = field(default_factory=list)
    unknown_labels: list[str] | None = None  # None: the version's class list was not available
    per_label: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (n, top-1 hits)

    @property
    def top1_accuracy(self) -> float:
        return self.top1_hits / self.n if self.n else 0.0

    @property
    def top5_accuracy(self) -> float:
        return self.top5_hits / self.n if self.n else 0.0

    @property
    def mean_confidence(self) -> float:
        return float(np.mean(self.confidences)) if self.confidences else 0.0

    def latency_ms(self, statistic: str) -> float:
        if not self.latencies_s:
            return 0.0
        values = np.asarray(self.latencies_s) * 1000
        return float(values.mean() if statistic == "mean" else np.percentile(values, float(statistic[1:])))


def score(version: str, answers: list[Answer], class_names: list[str] | None) -> VersionScore:
    """Figures of one version from its answers (pure; case-insensitive label matching)."""
    result = VersionScore(version)
    counts: dict[str, list[int]] = {}
    for answer in answers:
        wanted = answer.label.casefold()
        top5 = [name.casefold() for name in answer.top5]
        hit1 = bool(top5) and top5[0] == wanted
        result.n += 1
        result.top1_hits += hit1
        result.top5_hits += wanted in top5[:5]
        if answer.error is not None:
            result.errors += 1
        else:
            result.confidences.append(answer.prob5[0])
            result.latencies_s.append(answer.latency_s)
        per_label = counts.setdefault(answer.label, [0, 0])
        per_label[0] += 1
        per_label[1] += hit1
    result.per_label = {label: (n, hits) for label, (n, hits) in counts.items()}
    if class_names is not None:
        known = {name.casefold() for name in class_names}
        result.unknown_labels = sorted(label for label in counts if label.casefold() not in known)
    return result


def archive_labels(path: Path) -> list[str]:
    """The class names inside a .mar archive."""
    with zipfile.ZipFile(path) as mar:
        mapping = json.loads(mar.read(LABELS_FILE))
    return [mapping[str(i)] for i in range(len(mapping))]


class InferenceClient:
    def __init__(self, inference_url: str, model_name: str, timeout: float = 120.0) -> None:
        self.base_url = inference_url.rstrip("/")
        self.model_name = model_name
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def ask(self, version: str, label: str, path: Path) -> Answer:
        body = path.read_bytes()
        url = f"{self.base_url}/predictions/{self.model_name}/{version}"
        started = time.perf_counter()
        try:
            response = self.http.post(url, content=body, headers=OCTET)
        except httpx.HTTPError as exc:
            raise EvaluationError(f"TorchServe at {self.base_url} did not answer: {type(exc).__name__}: {exc}") from exc
        latency = time.perf_counter() - started
        if response.status_code == 200:
            doc = response.json()
            return Answer(label, path, tuple(doc["top5"]), tuple(float(p) for p in doc["prob5"]), latency)
        if response.status_code in (400, 413):  # this photo is refused; the others still count
            try:
                reason = str(response.json().get("error", response.text))
            except ValueError:
                reason = response.text
            return Answer(label, path, latency_s=latency, error=reason[:300])
        raise EvaluationError(
            f"TorchServe answered {response.status_code} for version {version}: {response.text[:300]}"
        )


def evaluate(
    client: InferenceClient,
    versions: list[str],
    collection: dict[str, list[Path]],
    class_names: dict[str, list[str] | None],
    advance: Callable[[], None] = lambda: None,
) -> list[VersionScore]:
    """Every photo through every version, versions taking turns; `advance` after each request."""
    photos = [(label, path) for label, paths in collection.items() for path in paths]
    for version in versions:  # the first request of a version may load lazily: not measured
        client.ask(version, *photos[0])
    answers: dict[str, list[Answer]] = {version: [] for version in versions}
    for label, path in photos:
        for version in versions:
            answers[version].append(client.ask(version, label, path))
            advance()
    return [score(version, answers[version], class_names.get(version)) for version in versions]


# --- output ----------------------------------------------------------------------------------------


def figures(scores: list[VersionScore]) -> list[tuple[str, list[str]]]:
    """The side-by-side rows: (metric, one cell per version)."""

    def each(cell: Callable[[VersionScore], str]) -> list[str]:
        return [cell(s) for s in scores]

    return [
        ("images", each(lambda s: str(s.n))),
        ("top-1 accuracy", each(lambda s: f"{s.top1_accuracy:.1%} ({s.top1_hits})")),
        ("top-5 accuracy", each(lambda s: f"{s.top5_accuracy:.1%} ({s.top5_hits})")),
        ("mean top-1 confidence", each(lambda s: f"{s.mean_confidence:.1%}")),
        ("latency mean", each(lambda s: f"{s.latency_ms('mean'):.0f} ms")),
        ("latency p50", each(lambda s: f"{s.latency_ms('p50'):.0f} ms")),
        ("latency p95", each(lambda s: f"{s.latency_ms('p95'):.0f} ms")),
        ("refused images", each(lambda s: str(s.errors))),
        ("labels it does not know", each(
            lambda s: "?" if s.unknown_labels is None else (", ".join(s.unknown_labels) or "-"))),
    ]


def per_label_rows(scores: list[VersionScore]) -> list[tuple[str, list[str]]]:
    labels = list(scores[0].per_label) if scores else []
    return [
        (label, [f"{s.per_label[label][1]}/{s.per_label[label][0]}" for s in scores])
        for label in labels
    ]


def rich_table(scores: list[VersionScore], title: str):  # noqa: ANN201 - rich is imported lazily
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for s in scores:
        table.add_column(f"version {s.version}", justify="right")
    for metric, cells in figures(scores):
        table.add_row(metric, *cells)
    table.add_section()
    for label, cells in per_label_rows(scores):
        table.add_row(f"top-1 on {label}", *cells)
    return table


def markdown(scores: list[VersionScore], directory: Path, inference_url: str, when: datetime | None = None) -> str:
    when = when or datetime.now(UTC)
    header = "| | " + " | ".join(f"version {s.version}" for s in scores) + " |"
    rule = "|---|" + "---:|" * len(scores)

    def table(rows: list[tuple[str, list[str]]]) -> list[str]:
        return [header, rule, *(f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows)]

    return "\n".join([
        f"# Model evaluation: {', '.join(s.version for s in scores)}",
        "",
        f"{when:%d %b %Y, %H:%M} UTC. Photos: `{directory}` ({scores[0].n if scores else 0} images, "
        f"{len(scores[0].per_label) if scores else 0} labels), through `{inference_url}`, one request at a "
        "time, versions taking turns. Labels match class names case-insensitively; a photo whose label a "
        "version does not know counts as a miss for it.",
        "",
        *table(figures(scores)),
        "",
        "## Top-1 hits per label",
        "",
        *table(per_label_rows(scores)),
        "",
    ])
