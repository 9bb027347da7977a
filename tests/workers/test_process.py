"""The worker as the stack runs it (`udagram worker` subprocess) and a TorchServe outage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.ports import free_port
from tests.workers.images import jpeg
from tests.workers.queues import dlq_messages, queue_counts, queue_empty
from tests.workers.uploads import new_upload
from tests.workers.waiting import record, wait_for, wait_status
from udagram.settings import Settings

pytestmark = [pytest.mark.torchserve, pytest.mark.aws]

BIN = Path(sys.executable).parent


def worker_env(settings: Settings, **extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UDAGRAM_", "AWS_"))}
    fields = ["mode", "queue_name", "dead_letter_queue_name", "originals_bucket", "processed_bucket",
              "images_table", "groups_table", "image_labels_table", "label_counts_table",
              "confidence_threshold", "torchserve_inference_url", "worker_poll_seconds",
              "worker_visibility_timeout_seconds", "worker_retry_base_seconds", "worker_retry_max_seconds",
              "worker_concurrency", "worker_shutdown_grace_seconds", "worker_stale_processing_seconds",
              "queue_max_receive_count", "worker_max_attempts", "worker_reconcile_on_start"]
    for name in fields:
        env[f"UDAGRAM_{name.upper()}"] = str(getattr(settings, name))
    env.update({"AWS_ENDPOINT_URL_S3": settings.s3_endpoint_url, "AWS_ENDPOINT_URL_SQS": settings.sqs_endpoint_url,
                "AWS_ENDPOINT_URL_DYNAMODB": settings.dynamodb_endpoint_url, "AWS_REGION": settings.aws_region,
                "AWS_ACCESS_KEY_ID": settings.aws_access_key_id,
                "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key,
                "UDAGRAM_DATA_DIR": str(settings.data_dir)})
    env.update({f"UDAGRAM_{k.upper()}": str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    def __init__(self, settings: Settings, log: Path, **extra: object):
        self.metrics_port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [str(BIN / "udagram"), "worker", "--metrics-port", str(self.metrics_port)],
            env=worker_env(settings, **extra), stdout=subprocess.DEVNULL, stderr=log.open("ab"),
            start_new_session=True)

    def lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def freeze(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def spawn(tmp_path):
    procs: list[WorkerProcess] = []

    def start(settings: Settings, **extra: object) -> WorkerProcess:
        p = WorkerProcess(settings, tmp_path / f"worker-{len(procs)}.log", **extra)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


def test_worker_process_metrics_logs_and_sigterm(settings, spawn):
    ids = [new_upload(settings, jpeg("chelsea")) for _ in range(3)]
    worker = spawn(settings)
    wait_status(ids)
    assert all(record(i).status == "DONE" for i in ids)
    def metrics_after_three() -> str | None:
        text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text
        return text if "udagram_worker_images_processed_total 3.0" in text else None

    # The counter moves just after the record's final write.
    metrics = wait_for(metrics_after_three, 10, "the processed counter")
    assert 'udagram_worker_stage_seconds_count{stage="predict"} 3.0' in metrics
    assert "udagram_worker_in_flight" in metrics
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=30) == 0
    done_lines = [line for line in worker.lines() if line.get("event") == "image done"]
    assert sorted(line["image_id"] for line in done_lines) == sorted(ids)
    assert all(line["level"] == "info" and "timestamp" in line for line in done_lines)


def test_sigterm_mid_work_releases_messages_and_exits_0(settings, spawn):
    ids = [new_upload(settings, jpeg("coffee", size=(4000, 3000))) for _ in range(8)]
    worker = spawn(settings, worker_shutdown_grace_seconds=0, worker_concurrency=2)
    wait_for(lambda: any(record(i).status in ("PROCESSING", "DONE") for i in ids), 60, "work under way")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=30) == 0
    # Released, not left invisible for the visibility timeout.
    visible, in_flight, _ = queue_counts(settings)
    not_done = [i for i in ids if record(i).status != "DONE"]
    assert not_done, "the worker finished everything before the signal: nothing was tested"
    assert in_flight == 0 and visible >= len(not_done)
    assert all(record(i).lease_owner is None for i in not_done)
    spawn(settings)
    records = wait_status(ids)
    assert [r.status for r in records] == ["DONE"] * len(ids)
    assert dlq_messages(settings) == []


def test_sigkill_mid_image_loses_nothing(settings, spawn):
    # Enough work that the worker is still busy when the test sees it start: an image takes well
    # under a second, faster than one round of reading every record on a loaded machine.
    photo = jpeg("chelsea", size=(6000, 4000))
    ids = [new_upload(settings, photo) for _ in range(12)]
    worker = spawn(settings, worker_concurrency=2)

    def frozen_holding_a_lease() -> list[str] | None:
        # Freeze, then look again: a lease seen a moment ago may have been released in between
        # (the worker can finish its images and not yet have leased the next ones).
        if "PROCESSING" not in [record(i).status for i in ids]:
            return None
        worker.freeze()
        statuses = [record(i).status for i in ids]
        if "PROCESSING" in statuses:
            return statuses
        worker.thaw()
        return None

    statuses = wait_for(frozen_holding_a_lease, 60, "a lease held by the frozen worker")
    worker.kill()
    assert "PROCESSING" in statuses  # a lease held by a dead worker
    stuck = [i for i, status in zip(ids, statuses, strict=True) if status != "DONE"]
    assert stuck, "the worker finished everything before it was killed: nothing was tested"
    spawn(settings)  # messages reappear after the (6 s) visibility timeout
    records = wait_status(ids, timeout=120)
    assert [r.status for r in records] == ["DONE"] * len(ids)
    assert all(r.attempts == 0 and r.lease_owner is None for r in records)
    wait_for(lambda: queue_empty(settings), 30, "queue drained")
    assert dlq_messages(settings) == []


def test_torchserve_outage_mid_run_loses_nothing(make_settings, start_worker, torchserve_factory):
    torchserve = torchserve_factory()
    settings = make_settings(torchserve=torchserve)
    first = [new_upload(settings, jpeg("chelsea")) for _ in range(3)]
    worker = start_worker(settings)
    wait_status(first)
    torchserve.stop()
    try:
        during = [new_upload(settings, jpeg("coffee")) for _ in range(6)]
        wait_for(lambda: worker.consumer.circuit.is_open, 60, "the circuit breaker to open")
        time.sleep(8)  # well past several back-offs and the visibility timeout
        statuses = {record(i).status for i in during}
        assert "FAILED" not in statuses and "DONE" not in statuses
        assert dlq_messages(settings) == []
    finally:
        torchserve.start()
    records = wait_status(during, timeout=180)
    assert [r.status for r in records] == ["DONE"] * len(during)
    assert all("espresso" in r.title for r in records)
    wait_for(lambda: queue_empty(settings), 30, "queue drained")
    assert dlq_messages(settings) == []
    worker.stop()


def test_worker_waits_for_unreachable_services_and_exits_0_on_sigterm(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(mode="local", data_dir=tmp_path, s3_endpoint_url=dead, sqs_endpoint_url=dead,
                        dynamodb_endpoint_url=dead, aws_access_key_id="unused", aws_secret_access_key="unused")
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        wait_for(lambda: any(line.get("event") == "AWS services not ready; retrying" for line in worker.lines()),
                 60, "the worker to report unreachable services")
        assert worker.proc.poll() is None  # still waiting, not crashed
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=30) == 0
    finally:
        worker.kill()
