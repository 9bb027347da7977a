"""Prometheus metrics of the worker (served by `udagram worker` on host:worker_metrics_port)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

PROCESSED = Counter("udagram_worker_images_processed_total", "Images that reached DONE")
FAILED = Counter("udagram_worker_images_failed_total", "Images that ended FAILED (poison input, given up)")
RERUNS_FAILED = Counter("udagram_worker_reruns_failed_total",
                        "Re-runs that failed while the image kept its earlier result (error recorded)")
RETRIES = Counter("udagram_worker_retries_total", "Deliveries backed off for a transient fault", ["reason"])
SKIPPED = Counter("udagram_worker_messages_skipped_total", "Records acknowledged without work", ["reason"])
# Each worker reconciles: with several, the same stranded image may be queued by each (the
# duplicates converge: a pending-only re-run of a finished image is skipped).
RECONCILED = Counter("udagram_worker_reconciled_total", "Stranded images this worker queued again (reconciliation)")
DEAD_LETTERED = Counter("udagram_worker_dead_lettered_total", "Messages moved to the DLQ by the worker")
IN_FLIGHT = Gauge("udagram_worker_in_flight", "Messages being handled right now")
CIRCUIT_OPEN = Gauge("udagram_worker_model_server_circuit_open", "1 while TorchServe is considered down")
# Per model version (workers/canary.py). `version` is the one that answered (for failures: the one
# asked for, "default" when none was named); `route`: default, canary or explicit (a re-run's version).
PREDICTIONS = Counter("udagram_worker_predictions_total", "Predictions by answering model version",
                      ["version", "route"])
PREDICTION_SECONDS = Histogram(
    "udagram_worker_prediction_seconds",
    "TorchServe prediction time (the client's quick retries included) by answering model version",
    ["version"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PREDICTION_FAILURES = Counter("udagram_worker_prediction_failures_total",
                              "Predictions that failed, by requested model version", ["version", "reason"])
CANARY_FALLBACKS = Counter("udagram_worker_canary_fallbacks_total",
                           "New uploads meant for the canary version that the default version classified "
                           "because TorchServe does not serve the canary", ["version"])
STAGE_SECONDS = Histogram(
    "udagram_worker_stage_seconds",
    "Time per processing stage",
    ["stage"],  # lease, download, decode, predict, render, upload, update, index
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@contextmanager
def stage(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        STAGE_SECONDS.labels(name).observe(elapsed)
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + elapsed
